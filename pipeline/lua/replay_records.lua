-- Move api-stage dead letters' records back to the pending queue, each only if its dead letter is
-- still there (two replays of one dead letter queue it once). Returns the ids moved.
-- Returns {-2} (nothing moved) when the caller's view of the forgotten users is out of date (see enqueue).
local dead, dead_idx, pending, arrivals, flow, stats, dead_kinds, forgotten_gen =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
-- ARGV[1]: the suppression list's generation the caller filtered with; ARGV[2..]: (dead letter id, record)
-- pairs

--! include now

--! include arrivals
--! include dead

if (redis.call('GET', forgotten_gen) or '0') ~= ARGV[1] then return {-2} end
local moved = {}
for i = 2, #ARGV, 2 do
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
