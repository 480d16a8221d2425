local st = redis.call('HGET', KEYS[1], 'status')
if not st or st == 'Completed' or st == 'Failed' or st == 'Canceled' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'status', ARGV[3])
if ARGV[4] == '1' then redis.call('SREM', KEYS[3], ARGV[5]) end
return 1
