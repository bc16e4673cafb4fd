-- A send is over: count the delivered rows, dead-letter the refused ones, remove the batch. Any answer
-- that proves the credentials (an HTTP 200, whatever CleverTap thought of the rows) ends an
-- authentication failure and puts every held batch back in the open set, due now, each under a new
-- dispatch generation.
-- Returns {1, (released held bid, generation)...}, or {0} when the batch was already finished elsewhere.
-- Safe to run twice.
local open, held, auth, dead, dead_idx, stats, debug, dead_kinds =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local base, bid, owner = ARGV[1], ARGV[2], ARGV[3]
local delivered, authenticated = tonumber(ARGV[4]), ARGV[5] == '1'
local counters = cjson.decode(ARGV[6])   -- {field: increment}
local debug_entry, debug_size = ARGV[7], tonumber(ARGV[8])   -- '' when the debugger is off
-- ARGV[9..]: dead letters as (id, entry) pairs

--! include now

--! include debugger
--! include dead

--! include lease
--! include settle
-- Run twice (a client's retry after a lost answer, or the worker recording it again through an outage):
-- the batch is gone, but a mark it leaves for a while says this owner finished it: {1}, nothing counted
-- again (held batches it released are already open; the sweep dispatches any whose message was lost).
local done = base .. 'done:' .. bid
if redis.call('GET', done) == owner then return {1} end
if not batch_left() then return {0} end
redis.call('SET', done, owner, 'EX', 600)
redis.call('HINCRBY', stats, 'delivered', delivered)
for i = 9, #ARGV, 2 do add_dead(ARGV[i], ARGV[i + 1], now) end
for field, n in pairs(counters) do redis.call('HINCRBY', stats, field, n) end
record_attempt()
settle(delivered, (#ARGV - 8) / 2)

redis.call('DEL', base .. 'batch:' .. bid, meta)
redis.call('ZREM', open, bid)
redis.call('ZREM', held, bid)
local out = {1}
if authenticated and redis.call('EXISTS', auth) == 1 then
  redis.call('DEL', auth)
  for _, h in ipairs(redis.call('ZRANGE', held, 0, -1)) do
    redis.call('ZADD', open, now, h)
    redis.call('HSET', base .. 'meta:' .. h, 'swept', 0)
    out[#out + 1] = h
    out[#out + 1] = redis.call('HINCRBY', base .. 'meta:' .. h, 'gen', 1)
  end
  redis.call('DEL', held)
end
return out
