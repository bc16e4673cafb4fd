-- A send failed in a way worth trying again: count the attempt against the batch (kind 'failures' or
-- 'throttles', each with a clock of its own from its first occurrence) and make it due after delay_ms,
-- under a new dispatch generation. Any answer other than a 429 ends a throttle streak.
-- Returns the new generation, or 0 when the batch was already finished elsewhere. Safe to run twice.
local open, stats, debug = KEYS[1], KEYS[2], KEYS[3]
local base, bid, owner = ARGV[1], ARGV[2], ARGV[3]
local delay_ms, kind, last_error = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local debug_entry, debug_size = ARGV[7] or '', tonumber(ARGV[8] or '0')

--! include now

--! include debugger

--! include lease
-- Run twice (a client's retry after a lost answer): the first run's generation, nothing counted again.
if redis.call('HGET', meta, 'recorded') == owner then return tonumber(redis.call('HGET', meta, 'gen')) end
if not batch_left() then return 0 end
record_attempt()
redis.call('HSET', meta, 'recorded', owner)

redis.call('HINCRBY', meta, 'attempts', 1)
redis.call('HINCRBY', meta, kind, 1)
redis.call('HSET', meta, 'last_error', last_error, 'swept', 0)
if kind == 'failures' then
  redis.call('HSETNX', meta, 'first_failure', now)
  redis.call('HDEL', meta, 'first_throttle')
  redis.call('HSET', meta, 'throttles', 0)
else
  redis.call('HSETNX', meta, 'first_throttle', now)
end
redis.call('HINCRBY', stats, 'retries_' .. kind, 1)
redis.call('ZADD', open, now + delay_ms, bid)
return redis.call('HINCRBY', meta, 'gen', 1)
