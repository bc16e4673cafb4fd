-- An import's file is read to its end: no more rows come, so its lane's last partial batch may be cut,
-- and once every record settled the import is done. Only from 'running' and at the caller's checkpoint.
-- Returns the state after.
local imp, imports = KEYS[1], KEYS[2]
local id, rows = ARGV[1], ARGV[2]

--! include now

local state = redis.call('HGET', imp, 'state')
if state ~= 'running' or redis.call('HGET', imp, 'rows') ~= rows then return state or 'gone' end
redis.call('HSET', imp, 'state', 'read', 'read_at', now, 'updated', now)
if redis.call('LLEN', imp .. ':records') == 0
    and tonumber(redis.call('HGET', imp, 'settled')) >= tonumber(redis.call('HGET', imp, 'queued')) then
  redis.call('HSET', imp, 'state', 'done', 'finished', now)
  redis.call('ZREM', imports, id)
  return 'done'
end
return 'read'
