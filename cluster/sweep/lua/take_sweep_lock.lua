-- Take or keep the lock of a sweep (KEYS[1]) for ARGV[1] (this driver) for ARGV[2] ms; ARGV[3] is a holder known
-- to be dead (its lock is taken over at once). 1: this driver holds the lock.
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] or holder == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
