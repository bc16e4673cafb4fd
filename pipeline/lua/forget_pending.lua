-- Forget a user, in the pending queue: one bounded step over the records from an absolute position (the
-- records ever cut from pending, flow's "cut", are the positions before its head), so a concurrent cut
-- never makes a step skip a record or look at one twice. A record whose identifying fields hold a
-- forgotten value (lib/names.lua) is overwritten by '' in place: a tombstone that assemble drops when it
-- cuts, so no step moves the rest of the list (LREM would scan it from the head each time).
-- Returns {next position, 1 when the end was reached else 0, removed record...}.
local pending, flow, stats = KEYS[1], KEYS[2], KEYS[3]
local position, step = tonumber(ARGV[1]), tonumber(ARGV[2])
local wanted = {}   -- ARGV[3]: the forgotten values, JSON-encoded (see lib/names.lua)
for _, v in ipairs(cjson.decode(ARGV[3])) do wanted[v] = true end

--! include names

local cut = tonumber(redis.call('HGET', flow, 'cut') or '0')
local len = redis.call('LLEN', pending)
local start = position - cut
if start < 0 then start = 0 end   -- cut into batches since the last step: the batches' pass sees them
if start >= len then return {cut + len, 1} end
local records = redis.call('LRANGE', pending, start, start + step - 1)
local out = {0, 0}
for i, record in ipairs(records) do
  if record ~= '' and names(record) then
    redis.call('LSET', pending, start + i - 1, '')
    out[#out + 1] = record
  end
end
if #out > 2 then redis.call('HINCRBY', stats, 'forgotten_records', #out - 2) end
out[1] = cut + start + #records
out[2] = (start + #records >= len) and 1 or 0
return out
