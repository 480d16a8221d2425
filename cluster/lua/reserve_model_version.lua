-- The next version number of a model (KEYS[1]: its counter), never below ARGV[1], the highest version the object
-- store already holds (the counter may have been lost with Redis).
local stored = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < stored then redis.call('SET', KEYS[1], stored) end
return redis.call('INCR', KEYS[1])
