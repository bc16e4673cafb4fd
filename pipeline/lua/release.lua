-- Free a token and wake one waiter. The wake list is trimmed to the limit: wake-ups nobody takes stay few.
-- Returns 1, or 0 when the token had already expired (or was never held).
local tokens, wake = KEYS[1], KEYS[2]
local token, limit = ARGV[1], tonumber(ARGV[2])

local removed = redis.call('ZREM', tokens, token)
if removed == 1 then
  redis.call('LPUSH', wake, 1)
  redis.call('LTRIM', wake, 0, limit - 1)
end
return removed
