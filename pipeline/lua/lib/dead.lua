-- Shared by the scripts that store or remove dead letters (included where a script says
-- "--! include dead"; it expects the locals dead, dead_idx and dead_kinds). dead_kinds counts dead letters
-- by kind ("api:<code>", "mapping:<reason>"), so status and metrics never read the letters themselves.
-- The kind is the entry's second key, written by deadletters.dead_letter(), so its first match is the entry's.
local function kind_of(entry)
  return string.match(entry, '^{"id":"[^"]*","kind":"([^"]*)"')
end
local function add_dead(id, entry, at)
  if redis.call('HSET', dead, id, entry) == 1 then
    local kind = kind_of(entry)
    if kind then redis.call('HINCRBY', dead_kinds, kind, 1) end
  end
  redis.call('ZADD', dead_idx, at, id)
end
local function remove_dead(id)  -- true when it was there (and is now gone)
  redis.call('ZREM', dead_idx, id)  -- always: an index entry whose letter is gone must not linger
  local entry = redis.call('HGET', dead, id)
  if not entry then return false end
  redis.call('HDEL', dead, id)
  local kind = kind_of(entry)
  if kind and redis.call('HINCRBY', dead_kinds, kind, -1) <= 0 then redis.call('HDEL', dead_kinds, kind) end
  return true
end
