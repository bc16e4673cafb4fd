-- Compare-and-delete: a run that overran its lock's TTL never frees the next run's lock.
local lock, token = KEYS[1], ARGV[1]
if redis.call('GET', lock) == token then return redis.call('DEL', lock) end
return 0
