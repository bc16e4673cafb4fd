-- A send is over: count the delivered rows, dead-letter the refused ones, remove the batch. A send
-- that delivered while the integration was failing authentication ends the failure and puts every
-- held batch back in the open set, due now.
-- Returns {1, released held bid...}, or {0} when the batch was already finished elsewhere.
local open, held, auth, dead, dead_idx, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local base, bid, owner = ARGV[1], ARGV[2], ARGV[3]
local delivered = tonumber(ARGV[4])
local counters = cjson.decode(ARGV[5])   -- {field: increment}
-- ARGV[6..]: dead letters as (id, entry) pairs

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local meta, lease = base .. 'meta:' .. bid, base .. 'lease:' .. bid
if redis.call('GET', lease) == owner then redis.call('DEL', lease) end
if redis.call('EXISTS', meta) == 0 then return {0} end
redis.call('HINCRBY', stats, 'delivered', delivered)
for i = 6, #ARGV, 2 do
  redis.call('HSET', dead, ARGV[i], ARGV[i + 1])
  redis.call('ZADD', dead_idx, now, ARGV[i])
end
for field, n in pairs(counters) do redis.call('HINCRBY', stats, field, n) end
redis.call('DEL', base .. 'batch:' .. bid, meta)
redis.call('ZREM', open, bid)
redis.call('ZREM', held, bid)
local out = {1}
if redis.call('EXISTS', auth) == 1 and delivered > 0 then
  redis.call('DEL', auth)
  for _, h in ipairs(redis.call('ZRANGE', held, 0, -1)) do
    redis.call('ZADD', open, now, h)
    out[#out + 1] = h
  end
  redis.call('DEL', held)
end
return out
