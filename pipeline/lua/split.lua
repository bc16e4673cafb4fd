-- CleverTap found the request too large (413): the batch becomes two, each with half its records (the
-- first half first), both open and due now, in one step. Their meta starts afresh but keeps 'created'.
-- Returns {first bid, second bid} (dispatch generation 1 each), or {} when the batch is gone.
local open, stats, debug = KEYS[1], KEYS[2], KEYS[3]
local base, bid, owner = ARGV[1], ARGV[2], ARGV[3]
local debug_entry, debug_size = ARGV[4] or '', tonumber(ARGV[5] or '0')

--! include now

--! include debugger

--! include lease
local batch = base .. 'batch:' .. bid
local body = redis.call('GET', batch)
if not body and redis.call('EXISTS', meta) == 0 then
  -- gone: finished elsewhere, or split by this very call sent twice (a client's retry after a lost
  -- answer), whose halves are what it returns again
  local made = {}
  for _, part in ipairs({'a', 'b'}) do
    if redis.call('EXISTS', base .. 'meta:' .. bid .. part) == 1 then made[#made + 1] = bid .. part end
  end
  return made
end
if not batch_left() or not body then return {} end
record_attempt()

local records = {}
for record in string.gmatch(body, '[^\n]+') do records[#records + 1] = record end
local half = math.floor(#records / 2)
local created = redis.call('HGET', meta, 'created') or now
-- A backfill batch's halves stay the lane's (import:open), sharing the room it held (isize).
local import, isize, run = unpack(redis.call('HMGET', meta, 'import', 'isize', 'run'))
local made = {}
for part, range in ipairs({{1, half}, {half + 1, #records}}) do
  -- a half can be empty: the batch was rewritten down to one record (a forget) while it was sent
  if range[2] >= range[1] then
    local child = bid .. (part == 1 and 'a' or 'b')
    redis.call('SET', base .. 'batch:' .. child, table.concat(records, '\n', range[1], range[2]))
    redis.call('HSET', base .. 'meta:' .. child, 'created', created, 'size', range[2] - range[1] + 1,
               'attempts', 0, 'failures', 0, 'throttles', 0, 'gen', 1)
    redis.call('ZADD', open, now, child)
    if import then
      local share = part == 1 and (range[2] - range[1] + 1) or (tonumber(isize or #records) - half)
      redis.call('HSET', base .. 'meta:' .. child, 'import', import, 'isize', share, 'run', run or '1')
      redis.call('SADD', base .. 'import:open', child)
    end
    made[#made + 1] = child
  end
end
redis.call('DEL', batch, meta)
redis.call('ZREM', open, bid)
if import then redis.call('SREM', base .. 'import:open', bid) end
redis.call('HINCRBY', stats, 'batches_split', 1)
return made
