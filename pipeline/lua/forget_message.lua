-- Forget a user, in Celery's broker (a plain Redis, the pipeline's or CELERY_BROKER_URL): replace one
-- queued message with its rewritten self (the forgotten user's events taken out), only if it is still
-- there as it was read. KEYS[1] is a queue's list or kombu's unacked hash; for a hash ARGV[3] names the
-- field (the delivery tag). Returns 1 when replaced, 0 when the message had gone (taken by a worker: its
-- task filters the events as it ingests them).
local key = KEYS[1]
local old, new, field = ARGV[1], ARGV[2], ARGV[3]

if field ~= '' then
  if redis.call('HGET', key, field) ~= old then return 0 end
  redis.call('HSET', key, field, new)
  return 1
end
local at = redis.call('LPOS', key, old)   -- Redis 6.0.6 or newer: the search is Redis's own, in C
if not at then return 0 end
redis.call('LSET', key, at, new)
return 1
