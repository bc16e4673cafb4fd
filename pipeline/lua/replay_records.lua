-- Move api-stage dead letters' records back to the pending queue, each only if its dead letter is
-- still there (two replays of one dead letter queue it once). Returns the ids moved.
local dead, dead_idx, pending, arrivals, flow, stats, dead_kinds =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
-- ARGV: (dead letter id, record) pairs

--! include now

--! include arrivals
--! include dead

local moved = {}
for i = 1, #ARGV, 2 do
  local id, record = ARGV[i], ARGV[i + 1]
  if remove_dead(id) then
    redis.call('RPUSH', pending, record)
    moved[#moved + 1] = id
  end
end
if #moved > 0 then
  mark_arrival(#moved)
  redis.call('HINCRBY', stats, 'replayed', #moved)
end
return moved
