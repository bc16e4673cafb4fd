-- CleverTap refused the credentials (or the configuration: a redirect, a 404, a 407): move the batch to
-- the held set and mark the integration as failing (its sends pause; the sweep sends one probe batch
-- every probe_ms).
-- Returns 1, or 0 when the batch was already finished elsewhere.
local open, held, auth, stats, debug = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local base, bid, owner, reason, probe_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local debug_entry, debug_size = ARGV[6] or '', tonumber(ARGV[7] or '0')

--! include now

--! include debugger

--! include lease
if redis.call('HGET', meta, 'recorded') == owner then return 1 end  -- run twice: nothing counted again
if not batch_left() then return 0 end
record_attempt()
redis.call('HSET', meta, 'recorded', owner)

redis.call('ZREM', open, bid)
redis.call('ZADD', held, now, bid)
redis.call('HINCRBY', meta, 'attempts', 1)
redis.call('HSET', meta, 'last_error', reason)
redis.call('HINCRBY', meta, 'gen', 1)  -- any message still queued for it is stale
if redis.call('EXISTS', auth) == 0 then redis.call('HSET', auth, 'since', now) end
redis.call('HSET', auth, 'reason', reason, 'next_probe', now + probe_ms, 'probe', '')
redis.call('HINCRBY', stats, 'auth_failures', 1)
return 1
