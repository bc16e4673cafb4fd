-- Cut up to max_batches batches of batch_size records from the pending queue: each becomes
-- batch:<bid> (the records joined by newlines) with its meta, registered in the open set as due now.
-- A partial batch goes only once the oldest waiting record has waited flush_ms. Nothing moves while
-- the integration fails authentication. Returns the new batch ids.
local pending, since, open, auth, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local size, flush_ms, max_batches = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local base, stem = ARGV[4], ARGV[5]   -- the integration's key base 'P:{I}:', a unique batch id stem

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if redis.call('EXISTS', auth) == 1 then return {} end
local oldest = tonumber(redis.call('GET', since) or '-1')
local made = {}
while #made < max_batches do
  local len = redis.call('LLEN', pending)
  if len == 0 then break end
  if len < size and (oldest < 0 or now - oldest < flush_ms) then break end
  local records = redis.call('LRANGE', pending, 0, size - 1)
  redis.call('LTRIM', pending, #records, -1)
  local bid = stem .. '-' .. (#made + 1)
  redis.call('SET', base .. 'batch:' .. bid, table.concat(records, '\n'))
  redis.call('HSET', base .. 'meta:' .. bid, 'created', now, 'size', #records, 'attempts', 0,
             'failures', 0, 'throttles', 0)
  redis.call('ZADD', open, now, bid)
  made[#made + 1] = bid
end
if #made > 0 then redis.call('HINCRBY', stats, 'batches_assembled', #made) end
if redis.call('LLEN', pending) == 0 then
  redis.call('DEL', since)
elseif oldest < 0 then
  redis.call('SET', since, now)
end
return made
