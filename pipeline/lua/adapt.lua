-- The account's effective in-flight limit. A 429 (which this pipeline's own requests never cause: they stay
-- within the configured limit) means another client uses the account. Shared by every worker.
--
-- down: a 429 on a request sent as the n-th of this pipeline's in flight (ARGV[4]; 0 when unknown) says
-- the account had fewer than n slots for it: the limit goes straight to n - 1 (never up), so it converges
-- on the first refusals, not in 15 % steps. Without n: down 15 %, at most once per cooldown_ms (one
-- congestion, one cut). A request this pipeline cut (timed out) keeps its token until its lease ends,
-- so it is still counted in n: a 429 then needs no excuse, and lowers the limit like any other.
-- up: every other answer raises the limit: fast, by 1 / limit, back up to just below where the last
-- refusal came (what worked then), then slowly, by 1 / (8 x limit x 2^probes), to probe whether the other
-- client has left; each probe refused at that level again halves the pace (up to 16x slower), and a
-- limit that climbs past it starts afresh. Never above the configured limit.
-- cut: a request cut by the client (timed out); counted ('cut_requests'), the limit left as it is.
-- Returns the effective limit, as text.
local limits = KEYS[1]
local mode, configured, cooldown_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4] or '0')

--! include now

local function keep()  -- an hour without a 429 and the account starts afresh
  redis.call('PEXPIRE', limits, 3600000)
end

local effective = math.min(configured, tonumber(redis.call('HGET', limits, 'effective') or configured))
if mode == 'cut' then
  redis.call('HINCRBY', limits, 'cut_requests', 1)
  if redis.call('PTTL', limits) < 0 then keep() end
elseif mode == 'down' then
  if n > 0 then
    local target = math.max(1, n - 1)
    if target < effective then
      -- refused again at (or past) the level refused before: a probe that failed, so probe more slowly
      if n >= tonumber(redis.call('HGET', limits, 'cut_from') or '1000') then
        redis.call('HINCRBY', limits, 'probes', 1)
      end
      redis.call('HSET', limits, 'effective', tostring(target), 'cut_from', tostring(n), 'cut_at', now)
      redis.call('HINCRBY', limits, 'cuts', 1)
      effective = target
      keep()
    end
  elseif now - tonumber(redis.call('HGET', limits, 'cut_at') or '0') >= cooldown_ms then
    redis.call('HSET', limits, 'cut_from', tostring(effective))
    effective = math.max(1, effective * 0.85)
    redis.call('HSET', limits, 'effective', tostring(effective), 'cut_at', now)
    redis.call('HINCRBY', limits, 'cuts', 1)
    keep()
  end
elseif effective < configured then
  local failed = tonumber(redis.call('HGET', limits, 'cut_from') or configured)
  local worked = failed - 1
  local probes = math.min(4, tonumber(redis.call('HGET', limits, 'probes') or '0'))
  local step = effective < worked and 1 / effective or 1 / (8 * effective * 2 ^ probes)
  effective = math.min(configured, effective + step)
  if effective >= failed + 1 then redis.call('HSET', limits, 'probes', 0) end  -- past it: the other left
  redis.call('HSET', limits, 'effective', tostring(effective))
end
return tostring(effective)
