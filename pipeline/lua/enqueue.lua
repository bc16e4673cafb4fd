-- Queue one chunk of mapped events for an integration, with everything that goes with it, in one step:
-- records, de-duplication marks, remembered identities, mapping dead letters, counters and, for a
-- message that may be delivered again (the clevertap.ingest task), how many of its chunks are done.
-- Records arrive as one blob joined by newlines (orjson never writes a raw newline), so the client's
-- packing cost stays flat whatever the chunk size.
-- Replaying mapping dead letters: an event that replaces a dead letter is queued (and a new dead letter
-- that replaces one is stored) only if that dead letter is still there, and it leaves in the same step:
-- two replays of one dead letter queue it once.
-- anonymous = "hold": a visitor's anonymous events wait in anon:<visitor> (a list; anon:idx scores each
-- visitor by when its first was held, for the sweep's expiry; anon:count counts them all). An event that
-- says who the visitor is releases them: their records are queued here, and the held events trimmed,
-- only if the list still starts and ends with the entries the caller mapped (no other enqueue took them).
-- Returns {records pushed, events skipped (already replayed, or held ones released elsewhere first),
-- anonymous events not held (the hold full), 0-based index of each duplicate event...}, or {-1} when the
-- integration's queue is past its high-water mark, {-2} when the caller's view of the forgotten users is
-- out of date (nothing written either way). The same call sent again (redis-py
-- resends after a timeout or a dropped connection, though the first may have run) answers what the first
-- did and writes nothing: events without a messageId are never queued twice that way.
local pending, arrivals, flow, seen, ids, dead, dead_idx, stats, progress, ids_seen, dead_kinds =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local anon_idx, anon_count = KEYS[12], KEYS[13]
local call = KEYS[14]                       -- this call's id: its answer, kept a while
local forgotten_gen = KEYS[15]              -- the suppression list's generation (forget_suppress.lua)
local tokens_seen = KEYS[16]                -- devices' push tokens queued within the window: SHA-1 -> ms
local tokens_sent = KEYS[17]                -- the same SHA-1 -> SHA-1 of the token record last queued
local ready = KEYS[18]                      -- on a single Redis: the set of integrations with records
local window_ms = tonumber(ARGV[1])
local message_ids = cjson.decode(ARGV[2])   -- one per event, '' when it has none
local counts = cjson.decode(ARGV[3])        -- records per event
local blob = ARGV[4]                        -- every record, joined by newlines
local identities = cjson.decode(ARGV[5])    -- [[userId, email], ...]
local letters = cjson.decode(ARGV[6])       -- [[dead letter id, entry, id it replaces or ''], ...]
local counters = cjson.decode(ARGV[7])      -- {field: increment}
local replaces = cjson.decode(ARGV[8])      -- per event: the dead letter id it replaces, or ''
local drops = cjson.decode(ARGV[9])         -- dead letter ids replayed into nothing (filtered): removed
local chunks_done = ARGV[10]                -- '' or the message's chunks done after this one
local identity_ms = tonumber(ARGV[11])      -- how long a remembered email lasts after its last identify
local high_water = tonumber(ARGV[12])       -- refuse the chunk when this many records wait already (0: none)
local holds = cjson.decode(ARGV[13])        -- [[visitor, entry, dead letter it replaces or ''], ...]
local claims = cjson.decode(ARGV[14])       -- [[visitor, first entry, last entry, count], ...] to release
local group_claims = cjson.decode(ARGV[15]) -- per event: the visitor whose held event it is, or ''
local hold_max, per_visitor = tonumber(ARGV[16]), tonumber(ARGV[17])
local base = ARGV[18]                       -- the integration's key base 'P:{I}:'; anon:<visitor> below it

-- The integration is marked ready here on a single Redis (its own round trip on a cluster, where the set
-- is in a slot of its own), whatever the call comes to, as a SADD beside it would.
if ready then redis.call('SADD', ready, ARGV[21]) end
local done = redis.call('GET', call)
if done then return cjson.decode(done) end
-- The caller filtered forgotten users' events with its view of the suppression list: an older view than
-- the list's is refused ({-2}, nothing written), and the caller reads the list again.
if (redis.call('GET', forgotten_gen) or '0') ~= ARGV[20] then return {-2} end

--! include now

--! include arrivals
--! include dead

local function claim(id)  -- true when the dead letter was there (and is now gone)
  if id == '' then return true end
  return remove_dead(id)
end

if high_water > 0 and redis.call('LLEN', pending) >= high_water then return {-1} end
-- The de-duplication set holds the window and no more; with the window at 0 it holds nothing.
if window_ms > 0 then
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', now - window_ms)
  local old = redis.call('ZRANGEBYSCORE', tokens_seen, '-inf', now - window_ms, 'LIMIT', 0, 500)
  if #old > 0 then
    redis.call('ZREM', tokens_seen, unpack(old))
    redis.call('HDEL', tokens_sent, unpack(old))
  end
else
  redis.call('DEL', seen, tokens_seen, tokens_sent)
end
-- Records go to pending in RPUSHes of at most PUSH_STEP: unpack() puts every element on Lua's C stack,
-- which holds about 8,000 (LUAI_MAXCSTACK), and a chunk of events can map to more records than that.
local PUSH_STEP = 1000
local released = {}
for _, c in ipairs(claims) do
  local list, n = base .. 'anon:' .. c[1], tonumber(c[4])
  if redis.call('LINDEX', list, 0) == c[2] and redis.call('LINDEX', list, n - 1) == c[3] then
    redis.call('LTRIM', list, n, -1)
    redis.call('DECRBY', anon_count, n)
    if redis.call('LLEN', list) == 0 then redis.call('ZREM', anon_idx, c[1]) end
    redis.call('HINCRBY', stats, 'anonymous_released', n)
    released[c[1]] = true
  end
end
local pos, find, sub = 1, string.find, string.sub
local buf, pushed, accepted, dups, skipped = {}, 0, 0, {}, 0
-- A push token record (mapping writes its type first): a device's token (its type and id) queued within the
-- window is not queued again while its record is the same (apps send the token with every identify); one
-- that moved to another objectId (another user on the device) or changed keys is queued again.
local TOKEN = '{"type":"token"'
local tokens_queued, tokens_repeated = 0, 0
local function fresh(record)
  if sub(record, 1, #TOKEN) ~= TOKEN then return true end
  if window_ms > 0 then
    local ok, rec = pcall(cjson.decode, record)
    local data = ok and type(rec) == 'table' and rec.tokenData or nil
    if type(data) == 'table' then
      local device = redis.sha1hex(tostring(data.type) .. '\0' .. tostring(data.id))
      local sent = redis.sha1hex(record)
      if redis.call('ZSCORE', tokens_seen, device) and redis.call('HGET', tokens_sent, device) == sent then
        tokens_repeated = tokens_repeated + 1
        return false
      end
      redis.call('ZADD', tokens_seen, now, device)
      redis.call('HSET', tokens_sent, device, sent)
    end
  end
  tokens_queued = tokens_queued + 1
  return true
end
local function flush()
  if #buf > 0 then
    redis.call('RPUSH', pending, unpack(buf))
    pushed = pushed + #buf
    buf = {}
  end
end
for g = 1, #counts do
  local mid, n = message_ids[g], counts[g]
  local visitor = group_claims[g] or ''
  local take = (visitor == '' or released[visitor] == true) and claim(replaces[g] or '')
  if not take then
    skipped = skipped + 1
  elseif window_ms > 0 and mid ~= '' and redis.call('ZSCORE', seen, mid) then
    take = false
    dups[#dups + 1] = g - 1
  else
    if window_ms > 0 and mid ~= '' then redis.call('ZADD', seen, now, mid) end
    accepted = accepted + 1
  end
  for _ = 1, n do
    local e = find(blob, '\n', pos, true)
    if take then
      local record = sub(blob, pos, (e or 0) - 1)
      if fresh(record) then
        buf[#buf + 1] = record
        if #buf >= PUSH_STEP then flush() end
      end
    end
    pos = (e or #blob) + 1
  end
end
flush()
if pushed > 0 then mark_arrival(pushed) end
for _, pair in ipairs(identities) do
  redis.call('HSET', ids, pair[1], pair[2])
  if identity_ms > 0 then redis.call('ZADD', ids_seen, now, pair[1]) end
end
-- Remembered emails expire identity_ms after their last identify (a few at a time, each call).
if identity_ms > 0 then
  local stale = redis.call('ZRANGEBYSCORE', ids_seen, '-inf', now - identity_ms, 'LIMIT', 0, 200)
  if #stale > 0 then
    redis.call('HDEL', ids, unpack(stale))
    redis.call('ZREM', ids_seen, unpack(stale))
  end
end
local added = 0   -- a letter replacing one another replay took already is not added, nor counted
for _, letter in ipairs(letters) do
  if claim(letter[3] or '') then
    add_dead(letter[1], letter[2], now)
    added = added + 1
  end
end
if added > 0 then redis.call('HINCRBY', stats, 'rejected_mapping', added) end
for _, id in ipairs(drops) do claim(id) end
for field, n in pairs(counters) do redis.call('HINCRBY', stats, field, n) end
redis.call('HINCRBY', stats, 'accepted', accepted)
redis.call('HINCRBY', stats, 'duplicate', #dups)
redis.call('HINCRBY', stats, 'records_queued', pushed)
if tokens_queued > 0 then redis.call('HINCRBY', stats, 'tokens_queued', tokens_queued) end
if tokens_repeated > 0 then redis.call('HINCRBY', stats, 'tokens_repeated', tokens_repeated) end
local held_now, held, full = tonumber(redis.call('GET', anon_count) or '0'), 0, 0
for _, h in ipairs(holds) do
  local list = base .. 'anon:' .. h[1]
  if held_now >= hold_max or redis.call('LLEN', list) >= per_visitor then
    full = full + 1   -- a replayed one keeps its dead letter: it is not claimed
  elseif claim(h[3] or '') then   -- a replay holds it once, and only while its dead letter is there
    redis.call('RPUSH', list, h[2])
    redis.call('ZADD', anon_idx, 'NX', now, h[1])
    held_now, held = held_now + 1, held + 1
  end
end
if held > 0 then
  redis.call('INCRBY', anon_count, held)
  redis.call('HINCRBY', stats, 'anonymous_held', held)
end
if full > 0 then
  redis.call('HINCRBY', stats, 'filtered', full)
  redis.call('HINCRBY', stats, 'anonymous_hold_full', full)
end
if chunks_done ~= '' then redis.call('SET', progress, chunks_done, 'EX', 86400) end
local out = {pushed, skipped, full}
for _, d in ipairs(dups) do out[#out + 1] = d end
redis.call('SET', call, cjson.encode(out), 'PX', ARGV[19])
return out
