if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
for i = 3, #ARGV do redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i]) end
return #ARGV - 2
