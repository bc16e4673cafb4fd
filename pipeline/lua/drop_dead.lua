-- Delete dead letters for good (dead-letters drop/purge, or a user forgotten), counted under the stats field
-- ARGV[1] names. Returns how many were there.
local dead, dead_idx, dead_kinds, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local counter = ARGV[1]   -- ARGV[2..]: dead letter ids

--! include dead

local n = 0
for i = 2, #ARGV do
  if remove_dead(ARGV[i]) then n = n + 1 end
end
if n > 0 then redis.call('HINCRBY', stats, counter, n) end
return n
