-- Give a batch back without having sent it (no token was free): due again after delay_ms, under a new
-- dispatch generation. Returns that generation, or 0 when the batch is gone.
local open = KEYS[1]
local base, bid, owner, delay_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local meta, lease = base .. 'meta:' .. bid, base .. 'lease:' .. bid
if redis.call('GET', lease) == owner then redis.call('DEL', lease) end
if redis.call('EXISTS', meta) == 0 or not redis.call('ZSCORE', open, bid) then return 0 end
redis.call('ZADD', open, now + delay_ms, bid)
redis.call('HSET', meta, 'swept', 0)
return redis.call('HINCRBY', meta, 'gen', 1)
