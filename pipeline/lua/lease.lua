-- Take the lease on an open batch, so one worker at a time sends it. While the integration fails
-- authentication, only the probe batch may go: any other is moved to the held set.
-- A batch has one live send message at a time: every script that dispatches it bumps its generation
-- (meta 'gen'), and a message carrying an older one is stale. A live message that arrives before the
-- batch is due (a countdown cut short by a clock skew) is not sent early either: it is given back.
-- Returns {'ok', now, created, attempts, failures, throttles, first_failure, first_throttle},
-- {'early', now, due}, or {'gone' | 'leased' | 'held' | 'stale', now}.
local open, held, auth = KEYS[1], KEYS[2], KEYS[3]
local base, bid, owner, lease_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local generation = tonumber(ARGV[5])   -- the message's; 0: a message from before generations (any)

--! include now

local due = redis.call('ZSCORE', open, bid)
if not due then return {'gone', now} end
local meta = base .. 'meta:' .. bid
if generation > 0 and tonumber(redis.call('HGET', meta, 'gen') or '1') ~= generation then
  return {'stale', now}
end
if redis.call('EXISTS', auth) == 1 and redis.call('HGET', auth, 'probe') ~= bid then
  redis.call('ZREM', open, bid)
  redis.call('ZADD', held, now, bid)
  redis.call('HINCRBY', meta, 'gen', 1)
  return {'held', now}
end
-- A message due within EARLY_SLACK_MS is sent now: a countdown fires a few ms early (Celery rounds ETAs,
-- and the worker's clock is not Redis's), and giving it back for less than that would cost a round trip
-- through the broker to gain nothing.
local EARLY_SLACK_MS = 50
if tonumber(due) > now + EARLY_SLACK_MS then return {'early', now, due} end
-- The same owner again is this very call sent twice (a client's retry after a lost answer): still its lease.
local lease = base .. 'lease:' .. bid
if not redis.call('SET', lease, owner, 'NX', 'PX', lease_ms) and redis.call('GET', lease) ~= owner then
  return {'leased', now}
end
local m = redis.call('HMGET', meta, 'created', 'attempts', 'failures', 'throttles', 'first_failure',
                     'first_throttle')
return {'ok', now, m[1] or now, m[2] or 0, m[3] or 0, m[4] or 0, m[5] or 0, m[6] or 0}
