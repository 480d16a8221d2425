if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'status', ARGV[3])
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
  redis.call('LPUSH', KEYS[5], '1')  -- wake the controller: a sweep may sample its next child now
  redis.call('LTRIM', KEYS[5], 0, 0)
  redis.call('SADD', KEYS[6], ARGV[5])  -- final: the controller drops it from the live index
end
return 1
