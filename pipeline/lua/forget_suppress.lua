-- Forget a user, from now on: add digests (SHA-256 of each forgotten value) to the integration's
-- suppression hash, each kept until its time (ms; `forgotten:until` orders them by it), and, when that
-- changed the list, move its generation so that every enqueue made with an older view of it is refused (the
-- caller reads the list again and filters). Up to 500 digests past their time are dropped in the same step.
-- Returns the list's generation.
local forgotten, gen, until_idx = KEYS[1], KEYS[2], KEYS[3]
local until_ms = ARGV[1]   -- ARGV[2..]: digests

--! include now

local changed = 0
for i = 2, #ARGV do
  -- new, or one whose time had passed (still in the hash until pruned): processes must read it again
  local was = tonumber(redis.call('HGET', forgotten, ARGV[i]) or '0')
  if was <= now then changed = changed + 1 end
  redis.call('HSET', forgotten, ARGV[i], until_ms)
  redis.call('ZADD', until_idx, until_ms, ARGV[i])
end
local stale = redis.call('ZRANGEBYSCORE', until_idx, '-inf', now, 'LIMIT', 0, 500)
if #stale > 0 then
  redis.call('HDEL', forgotten, unpack(stale))
  redis.call('ZREM', until_idx, unpack(stale))
  changed = changed + #stale
end
if changed > 0 then return redis.call('INCR', gen) end
return tonumber(redis.call('GET', gen) or '0')
