-- Give a batch back without having sent it (no token was free): due again after delay_ms.
local open = KEYS[1]
local base, bid, owner, delay_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local lease = base .. 'lease:' .. bid
if redis.call('GET', lease) == owner then redis.call('DEL', lease) end
redis.call('ZADD', open, 'XX', now + delay_ms, bid)
return now
