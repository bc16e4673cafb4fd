-- Take an in-flight token for a CleverTap account: a lease in a sorted set scored by expiry, so a
-- holder that dies frees its slot when the lease ends. The limit is the account's effective one: the
-- configured limit, lowered while another client shares the account (see adapt.lua).
-- ``reserve`` slots of that limit are not for this caller (the backfill lane leaves them to live batches).
-- Returns {1, in flight} when taken, {0, ms until the earliest lease ends} when the account is full.
local tokens, account_stats, limits = KEYS[1], KEYS[2], KEYS[3]
local configured, lease_ms, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local reserve = tonumber(ARGV[4] or '0')

--! include now

local effective = tonumber(redis.call('HGET', limits, 'effective') or configured)
local limit = math.max(1, math.min(configured, math.floor(effective)))
-- a reserve only while the limit leaves a slot beside it: at 1 the caller shares the one there is
if limit > reserve then limit = limit - reserve end
redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now)
local n = redis.call('ZCARD', tokens)
-- The same token again is this very call sent twice (a client's retry after a lost answer): still held.
if redis.call('ZSCORE', tokens, token) then return {1, n} end
if n >= limit then
  local first = redis.call('ZRANGE', tokens, 0, 0, 'WITHSCORES')
  return {0, first[2] and (tonumber(first[2]) - now) or 100}
end
redis.call('ZADD', tokens, now + lease_ms, token)
if n + 1 > tonumber(redis.call('HGET', account_stats, 'peak') or '0') then
  redis.call('HSET', account_stats, 'peak', n + 1)
end
return {1, n + 1}
