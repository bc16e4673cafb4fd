-- Cut batches from the integration's backfill lanes (one list per import, import:<id>:records, oldest
-- import first) into the open set, only while live traffic needs nothing: the live queue has no batch due
-- (a full batch waiting, or a partial one past flush_ms) and the slots live batches hold leave room.
-- ``slots`` is the integration's share of its account's in-flight limit; the lane's batches (open or
-- held, the set import:open) and the live open batches together stay within slots - reserve, so a live
-- batch cut next finds a slot free. A lane's partial batch goes only once its file is read (state 'read').
-- Each batch's meta names its import and the records it held (isize, what settle.lua frees); tombstones
-- (forget_pending.lua on a lane) are settled as they are cut. Returns the new batch ids (generation 1).
local pending, arrivals, flow, open, auth, stats, imports, backfill =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local size, flush_ms, base, stem = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local slots, reserve, max_batches = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])

--! include now

--! include oldest

if redis.call('EXISTS', auth) == 1 or redis.call('ZCARD', imports) == 0 then return {} end
local waiting = redis.call('LLEN', pending)
if waiting >= size or (waiting > 0 and now - oldest_waiting() >= flush_ms) then return {} end
-- The lane's batches still there (a batch whose meta is gone was ended by a path that did not settle it:
-- it must not hold a slot for ever).
local lane = 0
for _, bid in ipairs(redis.call('SMEMBERS', backfill)) do
  if redis.call('EXISTS', base .. 'meta:' .. bid) == 1 then lane = lane + 1 else redis.call('SREM', backfill, bid) end
end
local live = math.max(0, redis.call('ZCARD', open) - lane)
local room = math.min(max_batches, slots - reserve - live - lane)
local made = {}
if room <= 0 then return made end
for _, id in ipairs(redis.call('ZRANGE', imports, 0, -1)) do
  local imp = base .. 'import:' .. id
  local state = redis.call('HGET', imp, 'state')
  local records_key = imp .. ':records'
  -- A partial batch goes once the file is read, or once the importer's next chunk no longer fits in the
  -- window (it waits for room that only this batch can free).
  local f = redis.call('HMGET', imp, 'queued', 'settled', 'window', 'chunk', 'run')
  local starved = tonumber(f[3] or '0') > 0
    and tonumber(f[1] or '0') - tonumber(f[2] or '0') + tonumber(f[4] or '0') > tonumber(f[3])
  while #made < room and (state == 'running' or state == 'read') do
    local len = redis.call('LLEN', records_key)
    if len == 0 or (len < size and state ~= 'read' and not starved) then break end
    local records = redis.call('LRANGE', records_key, 0, size - 1)
    redis.call('LTRIM', records_key, #records, -1)
    redis.call('HINCRBY', imp, 'cut', #records)
    local kept = {}
    for _, record in ipairs(records) do
      if record ~= '' then kept[#kept + 1] = record end
    end
    if #kept < #records then redis.call('HINCRBY', imp, 'settled', #records - #kept) end
    if #kept > 0 then
      local bid = stem .. '-' .. (#made + 1)
      redis.call('SET', base .. 'batch:' .. bid, table.concat(kept, '\n'))
      redis.call('HSET', base .. 'meta:' .. bid, 'created', now, 'size', #kept, 'attempts', 0,
                 'failures', 0, 'throttles', 0, 'gen', 1, 'import', id, 'isize', #kept, 'run', f[5] or '1')
      redis.call('ZADD', open, now, bid)
      redis.call('SADD', backfill, bid)
      made[#made + 1] = bid
    end
  end
  if state == 'read' and redis.call('LLEN', records_key) == 0
      and tonumber(redis.call('HGET', imp, 'settled') or '0') >= tonumber(redis.call('HGET', imp, 'queued') or '0') then
    redis.call('HSET', imp, 'state', 'done', 'finished', now)
    redis.call('ZREM', imports, id)
  end
  if #made >= room then break end
end
if #made > 0 then
  redis.call('HINCRBY', stats, 'batches_assembled', #made)
  redis.call('HINCRBY', stats, 'backfill_batches', #made)
end
return made
