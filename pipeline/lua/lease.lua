-- Take the lease on an open batch, so one worker at a time sends it. While the integration fails
-- authentication, only the probe batch may go: any other is moved to the held set.
-- Returns {'ok', now, created, attempts, failures, throttles, first_failure, first_throttle},
-- or {'gone' | 'leased' | 'held', now}.
local open, held, auth = KEYS[1], KEYS[2], KEYS[3]
local base, bid, owner, lease_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if not redis.call('ZSCORE', open, bid) then return {'gone', now} end
if redis.call('EXISTS', auth) == 1 and redis.call('HGET', auth, 'probe') ~= bid then
  redis.call('ZREM', open, bid)
  redis.call('ZADD', held, now, bid)
  return {'held', now}
end
if not redis.call('SET', base .. 'lease:' .. bid, owner, 'NX', 'PX', lease_ms) then
  return {'leased', now}
end
local m = redis.call('HMGET', base .. 'meta:' .. bid, 'created', 'attempts', 'failures', 'throttles',
                     'first_failure', 'first_throttle')
return {'ok', now, m[1] or now, m[2] or 0, m[3] or 0, m[4] or 0, m[5] or 0, m[6] or 0}
