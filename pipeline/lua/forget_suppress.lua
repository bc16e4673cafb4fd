-- Forget a user, from now on: add digests (SHA-256 of each forgotten value) to the integration's
-- suppression hash, each kept until its time (ms), and move the hash's generation so that every enqueue
-- made with an older view of it is refused (the caller reads the hash again and filters). Digests past
-- their time are dropped in the same step. Returns the new generation.
local forgotten, gen = KEYS[1], KEYS[2]
local until_ms = ARGV[1]   -- ARGV[2..]: digests

--! include now

local all = redis.call('HGETALL', forgotten)
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then redis.call('HDEL', forgotten, all[i]) end
end
for i = 2, #ARGV do redis.call('HSET', forgotten, ARGV[i], until_ms) end
return redis.call('INCR', gen)
