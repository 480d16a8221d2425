local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == 'Completed' or st == 'Failed' or st == 'Canceled' then return st end
if st == 'Queued' and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[1], 'record', ARGV[1], 'status', 'Canceled', 'cancel', '1')
  redis.call('SREM', KEYS[3], ARGV[2])
  return 'canceled'
end
redis.call('HSET', KEYS[1], 'cancel', '1')
return 'requested'
