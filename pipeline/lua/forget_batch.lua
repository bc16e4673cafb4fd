-- Forget a user, in one assembled batch (open or held): the batch is rewritten without the records that
-- name a forgotten value (lib/names.lua; its size in meta follows), and removed whole when none is left.
-- A batch being sent at that moment keeps its lease: its retry, split or hold reads the batch as
-- rewritten; the caller waits for the lease to end before it looks at the dead letters and the debugger
-- again.
-- Returns {-1} when the batch is gone, else {records removed, 1 when leased else 0, removed record...}.
local open, held, stats = KEYS[1], KEYS[2], KEYS[3]
local base, bid = ARGV[1], ARGV[2]
local wanted = {}   -- ARGV[3]: the forgotten values, JSON-encoded (see lib/names.lua)
for _, v in ipairs(cjson.decode(ARGV[3])) do wanted[v] = true end

--! include names

local batch, meta, lease = base .. 'batch:' .. bid, base .. 'meta:' .. bid, base .. 'lease:' .. bid

--! include now

--! include settle
local body = redis.call('GET', batch)
if not body then return {-1} end
local kept, out = {}, {0, redis.call('EXISTS', lease)}
local pos = 1
while pos <= #body + 1 do
  local e = find(body, '\n', pos, true) or (#body + 1)
  local record = sub(body, pos, e - 1)
  if names(record) then out[#out + 1] = record else kept[#kept + 1] = record end
  pos = e + 1
end
local removed = #out - 2
if removed == 0 then return out end
out[1] = removed
redis.call('HINCRBY', stats, 'forgotten_records', removed)
if #kept == 0 then
  settle(0, 0)
  redis.call('DEL', batch, meta)
  redis.call('ZREM', open, bid)
  redis.call('ZREM', held, bid)
else
  redis.call('SET', batch, table.concat(kept, '\n'))
  redis.call('HSET', meta, 'size', #kept)
end
return out
