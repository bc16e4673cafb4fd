-- Cancel an import: what it had queued goes (its lane, and its batches not being sent at this moment;
-- one being sent finishes, and settles as usual), the importer's next chunk is refused, and the lane
-- stops. The import is kept, 'cancelled', for `import status`. Returns {records removed, batches
-- removed, batches left sending}, or {-1} when there is no such import or it has ended.
local imp, imports, open, held, backfill, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, base = ARGV[1], ARGV[2]

--! include now

local state = redis.call('HGET', imp, 'state')
if state ~= 'running' and state ~= 'read' then return {-1} end
local removed = redis.call('LLEN', imp .. ':records')
redis.call('UNLINK', imp .. ':records')
local batches, sending = 0, 0
for _, bid in ipairs(redis.call('SMEMBERS', backfill)) do
  local meta = base .. 'meta:' .. bid
  if redis.call('HGET', meta, 'import') == id then
    if redis.call('EXISTS', base .. 'lease:' .. bid) == 1 then
      sending = sending + 1
    else
      removed = removed + tonumber(redis.call('HGET', meta, 'size') or '0')
      redis.call('HINCRBY', imp, 'settled', tonumber(redis.call('HGET', meta, 'isize') or '0'))
      redis.call('DEL', base .. 'batch:' .. bid, meta)
      redis.call('ZREM', open, bid)
      redis.call('ZREM', held, bid)
      redis.call('SREM', backfill, bid)
      batches = batches + 1
    end
  end
end
redis.call('HSET', imp, 'state', 'cancelled', 'finished', now, 'updated', now, 'removed', removed)
redis.call('ZREM', imports, id)
redis.call('HINCRBY', stats, 'import_removed', removed)
return {removed, batches, sending}
