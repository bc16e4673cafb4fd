-- One page of dead-letter ids, oldest first, after a cursor: the (ms, id) of the last one the caller saw.
-- Members of dead_idx are ordered by ms, then id; a cursor, unlike an offset, neither skips nor repeats
-- when letters are removed (replayed, purged, expired) between pages.
-- Returns {id, ms, id, ms, ...}.
local dead_idx = KEYS[1]
local after_ms, after_id = ARGV[1], ARGV[2]   -- '-inf' and '' for the first page
local low, high, count = ARGV[3], ARGV[4], tonumber(ARGV[5])   -- the time range (ms, or -inf/+inf)

local floor = after_ms
if after_ms == '-inf' or (low ~= '-inf' and tonumber(low) > tonumber(after_ms)) then floor = low end
local after = tonumber(after_ms) or -math.huge
-- a > b byte by byte, as the sorted set orders members of one score (Lua's own < may follow the locale)
local function bytes_after(a, b)
  if a == b then return false end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local out, offset = {}, 0
while #out < 2 * count do
  local chunk = redis.call('ZRANGEBYSCORE', dead_idx, floor, high, 'WITHSCORES', 'LIMIT', offset, count)
  if #chunk == 0 then break end
  for i = 1, #chunk, 2 do
    local id, ms = chunk[i], tonumber(chunk[i + 1])
    if (ms > after or (ms == after and bytes_after(id, after_id))) and #out < 2 * count then
      out[#out + 1] = id
      out[#out + 1] = chunk[i + 1]
    end
  end
  offset = offset + #chunk / 2
end
return out
