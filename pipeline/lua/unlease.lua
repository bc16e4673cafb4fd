-- Give a batch back without having sent it (no token was free): due again after delay_ms, under a new
-- dispatch generation. Returns that generation, or 0 when the batch is gone.
local open = KEYS[1]
local base, bid, owner, delay_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

--! include now

--! include lease
if not batch_left() or not redis.call('ZSCORE', open, bid) then return 0 end
redis.call('ZADD', open, now + delay_ms, bid)
redis.call('HSET', meta, 'swept', 0)
return redis.call('HINCRBY', meta, 'gen', 1)
