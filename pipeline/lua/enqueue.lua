-- Queue one chunk of mapped events for an integration, with everything that goes with it, in one step:
-- records, de-duplication marks, remembered identities, mapping dead letters and counters. A replayed
-- mapping dead letter leaves in the same step that queues its records.
-- Records arrive as one blob joined by newlines (orjson never writes a raw newline), so the client's
-- packing cost stays flat whatever the chunk size.
-- Returns {records pushed, 0-based index of each duplicate event...}.
local pending, since, seen, ids, dead, dead_idx, stats =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local window_ms = tonumber(ARGV[1])
local message_ids = cjson.decode(ARGV[2])   -- one per event, '' when it has none
local counts = cjson.decode(ARGV[3])        -- records per event
local blob = ARGV[4]                        -- every record, joined by newlines
local identities = cjson.decode(ARGV[5])    -- [[userId, email], ...]
local letters = cjson.decode(ARGV[6])       -- [[dead letter id, entry], ...]
local counters = cjson.decode(ARGV[7])      -- {field: increment}
local replaces = cjson.decode(ARGV[8])      -- [dead letter id, ...]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if window_ms > 0 then redis.call('ZREMRANGEBYSCORE', seen, '-inf', now - window_ms) end
local pos, find, sub = 1, string.find, string.sub
local buf, pushed, accepted, dups = {}, 0, 0, {}
local function flush()
  if #buf > 0 then
    redis.call('RPUSH', pending, unpack(buf))
    pushed = pushed + #buf
    buf = {}
  end
end
for g = 1, #counts do
  local mid, n = message_ids[g], counts[g]
  local dup = false
  if window_ms > 0 and mid ~= '' then
    if redis.call('ZSCORE', seen, mid) then dup = true else redis.call('ZADD', seen, now, mid) end
  end
  if dup then dups[#dups + 1] = g - 1 else accepted = accepted + 1 end
  for _ = 1, n do
    local e = find(blob, '\n', pos, true)
    if not dup then
      buf[#buf + 1] = sub(blob, pos, (e or 0) - 1)
      if #buf >= 1000 then flush() end
    end
    pos = (e or #blob) + 1
  end
end
flush()
if pushed > 0 then redis.call('SET', since, now, 'NX') end
for _, pair in ipairs(identities) do redis.call('HSET', ids, pair[1], pair[2]) end
for _, pair in ipairs(letters) do
  redis.call('HSET', dead, pair[1], pair[2])
  redis.call('ZADD', dead_idx, now, pair[1])
end
for field, n in pairs(counters) do redis.call('HINCRBY', stats, field, n) end
for _, old in ipairs(replaces) do
  redis.call('HDEL', dead, old)
  redis.call('ZREM', dead_idx, old)
end
redis.call('HINCRBY', stats, 'accepted', accepted)
redis.call('HINCRBY', stats, 'duplicate', #dups)
redis.call('HINCRBY', stats, 'records_queued', pushed)
local out = {pushed}
for _, d in ipairs(dups) do out[#out + 1] = d end
return out
