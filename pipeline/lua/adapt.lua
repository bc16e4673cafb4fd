-- The account's effective in-flight limit, AIMD: a 429 (which this pipeline's own requests never cause:
-- they stay within the configured limit) means another client uses the account, so the limit comes down by
-- 15 %, at most once per cooldown_ms (one congestion, one cut). Every other answer raises it: fast, by
-- 1 / limit, back up to just below where the last cut happened (what worked then), and slowly, by
-- 1 / (8 x limit), past that, to probe whether the other client has left; never above the configured
-- limit. Shared by every worker. With another client holding 5 of 15 slots it settles on 10 and probes 11
-- about once in 90 requests. Returns the effective limit, as text.
local limits = KEYS[1]
local mode, configured, cooldown_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

--! include now

local effective = math.min(configured, tonumber(redis.call('HGET', limits, 'effective') or configured))
if mode == 'down' then
  if now - tonumber(redis.call('HGET', limits, 'cut_at') or '0') >= cooldown_ms then
    redis.call('HSET', limits, 'cut_from', tostring(effective))
    effective = math.max(1, effective * 0.85)
    redis.call('HSET', limits, 'effective', tostring(effective), 'cut_at', now)
    redis.call('HINCRBY', limits, 'cuts', 1)
    redis.call('PEXPIRE', limits, 3600000)  -- an hour without a 429 and the account starts afresh
  end
elseif effective < configured then
  local worked = tonumber(redis.call('HGET', limits, 'cut_from') or configured) - 1
  local step = effective < worked and 1 / effective or 1 / (8 * effective)
  effective = math.min(configured, effective + step)
  redis.call('HSET', limits, 'effective', tostring(effective))
end
return tostring(effective)
