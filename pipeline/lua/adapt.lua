-- The account's effective in-flight limit, AIMD: a 429 (which this pipeline's own requests never cause:
-- they stay within the configured limit) means another client uses the account, so the limit comes down by
-- a quarter, at most once per cooldown_ms (one congestion, one cut); every other answer raises it by
-- 1 / (3 x limit), about one a few rounds of requests, never above the configured limit. Shared by every
-- worker. Returns the effective limit, as text.
local limits = KEYS[1]
local mode, configured, cooldown_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local effective = math.min(configured, tonumber(redis.call('HGET', limits, 'effective') or configured))
if mode == 'down' then
  if now - tonumber(redis.call('HGET', limits, 'cut_at') or '0') >= cooldown_ms then
    effective = math.max(1, effective * 0.75)
    redis.call('HSET', limits, 'effective', tostring(effective), 'cut_at', now)
    redis.call('HINCRBY', limits, 'cuts', 1)
  end
elseif effective < configured then
  effective = math.min(configured, effective + 1 / (3 * effective))
  redis.call('HSET', limits, 'effective', tostring(effective))
end
return tostring(effective)
