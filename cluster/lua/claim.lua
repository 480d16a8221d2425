local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', ''} end
redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if st == 'Completed' or st == 'Failed' or st == 'Canceled' then return {'final', st} end
local holder = redis.call('GET', KEYS[2])
if holder then return {'held', holder} end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
local token = ARGV[1] .. '/' .. attempt
redis.call('SET', KEYS[2], token, 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
return {'ok', token, redis.call('HGET', KEYS[1], 'record') or '', redis.call('HGET', KEYS[1], 'spec') or ''}
