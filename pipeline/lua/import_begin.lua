-- Start an import, or find the one this very file and these options started (the id is derived from
-- them): a new one is 'running' from row 0; a cancelled one starts again from row 0; any other is resumed
-- where its checkpoint says. Only the last 100 imports are kept for `import status` (finished ones go
-- first). Returns {state, rows already read}.
local imp, imports, all = KEYS[1], KEYS[2], KEYS[3]
local id, fields = ARGV[1], cjson.decode(ARGV[2])   -- {field: value} describing the file, kept as they are

--! include now

local state = redis.call('HGET', imp, 'state')
if state and state ~= 'cancelled' then
  return {state, redis.call('HGET', imp, 'rows') or '0'}
end
-- a cancelled import started again is a new run: its batches still being sent settle into the old one
local run = tonumber(redis.call('HGET', imp, 'run') or (state and '1' or '0')) + 1
redis.call('DEL', imp, imp .. ':records')
redis.call('HSET', imp, 'run', run)
for k, v in pairs(fields) do redis.call('HSET', imp, k, v) end
redis.call('HSET', imp, 'state', 'running', 'started', now, 'updated', now, 'rows', 0, 'queued', 0,
           'settled', 0, 'cut', 0, 'delivered', 0, 'dead', 0, 'refused', 0, 'filtered', 0, 'old', 0)
redis.call('ZADD', imports, now, id)
redis.call('ZADD', all, now, id)
local excess = redis.call('ZCARD', all) - 100
if excess > 0 then
  for _, old in ipairs(redis.call('ZRANGE', all, 0, -1)) do
    if excess <= 0 then break end
    local key = string.sub(imp, 1, #imp - #id) .. old
    local s = redis.call('HGET', key, 'state')
    if s ~= 'running' and s ~= 'read' then
      redis.call('DEL', key, key .. ':records')
      redis.call('ZREM', all, old)
      excess = excess - 1
    end
  end
end
return {'running', '0'}
