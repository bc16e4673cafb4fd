-- Re-publish open batches overdue by grace_ms that nobody holds a lease on (a lost message, a killed
-- worker), and start an authentication probe when one is due.
-- Returns {open, held, pending, probe bid or '', re-published bid...}.
local open, held, auth, pending, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local base, grace_ms, probe_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local overdue = redis.call('ZRANGEBYSCORE', open, '-inf', now - grace_ms, 'LIMIT', 0, 1000)
local again = {}
for _, bid in ipairs(overdue) do
  if redis.call('EXISTS', base .. 'lease:' .. bid) == 0 then
    redis.call('ZADD', open, now, bid)
    again[#again + 1] = bid
  end
end
local probe = ''
if redis.call('EXISTS', auth) == 1 and tonumber(redis.call('HGET', auth, 'next_probe') or 0) <= now then
  local first = redis.call('ZRANGE', held, 0, 0)
  if #first == 0 then
    redis.call('DEL', auth)  -- nothing held: the assembler's next batch is the probe
  else
    probe = first[1]
    redis.call('ZREM', held, probe)
    redis.call('ZADD', open, now, probe)
    redis.call('HSET', auth, 'probe', probe, 'next_probe', now + probe_ms)
  end
end
if #again > 0 then redis.call('HINCRBY', stats, 'swept', #again) end
local out = {redis.call('ZCARD', open), redis.call('ZCARD', held), redis.call('LLEN', pending), probe}
for _, bid in ipairs(again) do out[#out + 1] = bid end
return out
