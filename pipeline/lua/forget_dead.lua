-- Forget a user, in the dead letters: remove these (each with its index entry and kind count). Returns how
-- many were there.
local dead, dead_idx, dead_kinds, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- ARGV: dead letter ids

--! include dead

local n = 0
for _, id in ipairs(ARGV) do
  if remove_dead(id) then n = n + 1 end
end
if n > 0 then redis.call('HINCRBY', stats, 'forgotten_dead_letters', n) end
return n
