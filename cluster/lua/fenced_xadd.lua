-- Fenced append: the lines (ARGV[3..], pairs of stream and text; "eof" ends the log) are added only while the
-- attempt's lease token (ARGV[1]) is the run's; returns how many were added (-1: the lease is not ours).
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local n = 0
for i = 3, #ARGV, 2 do
  if ARGV[i] == 'eof' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'eof', '1')
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 's', ARGV[i], 'l', ARGV[i + 1])
  end
  n = n + 1
end
return n
