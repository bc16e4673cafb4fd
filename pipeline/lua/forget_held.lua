-- Forget a user, in the anonymous hold: drop every event held for these visitors (digests of their
-- anonymousIds), keeping the hold's count true. Returns how many events were dropped.
local anon_idx, anon_count, stats = KEYS[1], KEYS[2], KEYS[3]
local base = ARGV[1]   -- the integration's key base 'P:{I}:'; ARGV[2..]: visitors

local n = 0
for i = 2, #ARGV do
  local list = base .. 'anon:' .. ARGV[i]
  local held = redis.call('LLEN', list)
  if held > 0 then
    redis.call('DEL', list)
    n = n + held
  end
  redis.call('ZREM', anon_idx, ARGV[i])
end
if n > 0 then
  if redis.call('DECRBY', anon_count, n) <= 0 then redis.call('DEL', anon_count) end
  redis.call('HINCRBY', stats, 'forgotten_held', n)
end
return n
