-- Cut up to max_batches batches (and no more than keep the open set within cap) of batch_size records
-- from the pending queue: each becomes
-- batch:<bid> (the records joined by newlines) with its meta, registered in the open set as due now.
-- A partial batch goes only once the oldest record still waiting has waited flush_ms: arrivals holds
-- "records pushed in all so far:ms" marks, flow counts records pushed and cut, so the arrival time of the
-- oldest record left after a cut is known exactly (to 10 ms). Nothing moves while the integration fails
-- authentication. Each new batch's dispatch generation is 1 (see lease.lua). Push token records are cut
-- into batches of their own (a cut of 1,000 records may so make a few batches more than max_batches).
-- Returns the new batch ids.
local pending, arrivals, flow, open, auth, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local backfill = KEYS[7]              -- the backfill lane's batches (assemble_backfill.lua): not live ones
local size, flush_ms, max_batches = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local base, stem = ARGV[4], ARGV[5]   -- the integration's key base 'P:{I}:', a unique batch id stem
local cap = tonumber(ARGV[6])         -- at most this many batches open (sent soon), 0: no cap
local token_size = tonumber(ARGV[7] or '100')  -- push token records a batch: CleverTap takes 100 a request

--! include now

--! include oldest

if redis.call('EXISTS', auth) == 1 then return {} end
if cap > 0 then
  -- Bounded dispatch: only as many batches as can be sent soon; the rest of a backlog waits as records.
  -- Batches backing off for longer than a few seconds do not count against cap (a couple that keep
  -- failing must not stop the rest), but no more than 4 x cap are open at all (an account that is down
  -- does not turn its whole backlog into batches and broker messages).
  -- The backfill lane's batches take only slots live traffic leaves: they never count against its cap.
  local lane = redis.call('SCARD', backfill)
  local soon = math.max(0, redis.call('ZCOUNT', open, '-inf', now + 5000) - lane)
  max_batches = math.min(max_batches, cap - soon, 4 * cap - math.max(0, redis.call('ZCARD', open) - lane))
  if max_batches <= 0 then return {} end
end
local waiting = redis.call('LLEN', pending)
if waiting > 0 and redis.call('LLEN', arrivals) == 0 then  -- records queued by an older version
  local cut = tonumber(redis.call('HGET', flow, 'cut') or '0')
  redis.call('HSET', flow, 'pushed', cut + waiting)
  redis.call('RPUSH', arrivals, (cut + waiting) .. ':' .. now)
end
local oldest = oldest_waiting()
local made = {}
local TOKEN = '{"type":"token"'
local function new_batch(records, first, last)
  local bid = stem .. '-' .. (#made + 1)
  redis.call('SET', base .. 'batch:' .. bid, table.concat(records, '\n', first, last))
  redis.call('HSET', base .. 'meta:' .. bid, 'created', now, 'size', last - first + 1, 'attempts', 0,
             'failures', 0, 'throttles', 0, 'gen', 1)
  redis.call('ZADD', open, now, bid)
  made[#made + 1] = bid
end
-- Records looked at in all, tombstones included (forget_pending.lua): a run of forgotten records makes no
-- batch, and must not make one call long either.
local looked = 0
while #made < max_batches and looked < max_batches * size do
  local len = redis.call('LLEN', pending)
  if len == 0 then break end
  if len < size and now - oldest < flush_ms then break end
  local records = redis.call('LRANGE', pending, 0, size - 1)
  redis.call('LTRIM', pending, #records, -1)
  redis.call('HINCRBY', flow, 'cut', #records)
  looked = looked + #records
  -- '' is a forgotten record's tombstone (forget_pending.lua): cut, never sent. Push token records
  -- (mapping writes their type first) go in batches of their own, of at most token_size.
  local live, tokens = {}, {}
  for _, record in ipairs(records) do
    if string.sub(record, 1, #TOKEN) == TOKEN then
      tokens[#tokens + 1] = record
    elseif record ~= '' then
      live[#live + 1] = record
    end
  end
  if #live > 0 then new_batch(live, 1, #live) end
  for first = 1, #tokens, token_size do
    new_batch(tokens, first, math.min(#tokens, first + token_size - 1))
  end
  oldest = oldest_waiting()
end
if #made > 0 then redis.call('HINCRBY', stats, 'batches_assembled', #made) end
if redis.call('LLEN', pending) == 0 then redis.call('DEL', arrivals, flow) end
return made
