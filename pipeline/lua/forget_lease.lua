-- A forget request's lease: the one process working on it ('take' it when free or already its own,
-- 'renew' it while still its own, 'drop' it). Returns 1 when done, 0 when another holds it.
local lease = KEYS[1]
local op, owner, ms = ARGV[1], ARGV[2], ARGV[3]

local current = redis.call('GET', lease)
if op == 'drop' then
  if current == owner then redis.call('DEL', lease) end
  return 1
end
if current and current ~= owner then return 0 end
if op == 'renew' and not current then return 0 end
redis.call('SET', lease, owner, 'PX', ms)
return 1
