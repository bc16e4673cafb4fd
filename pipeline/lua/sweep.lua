-- Re-publish open batches overdue by grace_ms that nobody holds a lease on (a lost message, a killed
-- worker), and start an authentication probe when one is due. A batch merely waiting in a long send
-- queue looks the same as a lost one, so each further re-publish of the same batch waits twice as long
-- (grace, 2 x grace, 4 x grace, ... 64 x grace), and each bumps the batch's dispatch generation: the copy
-- still in the queue is stale when it arrives. One live message a batch, whatever the backlog.
-- Dead letters are kept dead_max_age_ms and dead_max_count at most (the oldest go first). A visitor's held
-- anonymous events that nothing claimed within hold_ms are counted (anonymous_expired) and filtered.
-- Returns {open, held, pending, probe bid or '', probe generation, (re-published bid, generation)...}.
local open, held, auth, pending, stats, dead, dead_idx, debug, dead_kinds, anon_idx, anon_count =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local base, grace_ms, probe_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local dead_max_age_ms, dead_max_count = tonumber(ARGV[4]), tonumber(ARGV[5])   -- 0: no limit
local hold_ms = tonumber(ARGV[6] or '0')   -- how long anonymous events are held; 0: none are

--! include dead

--! include now

local overdue = redis.call('ZRANGEBYSCORE', open, '-inf', now - grace_ms, 'WITHSCORES', 'LIMIT', 0, 1000)
local again = {}
for i = 1, #overdue, 2 do
  local bid, due = overdue[i], tonumber(overdue[i + 1])
  local meta = base .. 'meta:' .. bid
  local swept = tonumber(redis.call('HGET', meta, 'swept') or '0')
  if redis.call('EXISTS', base .. 'lease:' .. bid) == 0 and now - due >= grace_ms * 2 ^ math.min(swept, 6) then
    redis.call('ZADD', open, now, bid)
    redis.call('HINCRBY', meta, 'swept', 1)
    again[#again + 1] = bid
    again[#again + 1] = redis.call('HINCRBY', meta, 'gen', 1)
  end
end
local probe, probe_gen = '', 0
if redis.call('EXISTS', auth) == 1 and tonumber(redis.call('HGET', auth, 'next_probe') or 0) <= now then
  local first = redis.call('ZRANGE', held, 0, 0)
  if #first == 0 then
    redis.call('DEL', auth)  -- nothing held: the assembler's next batch is the probe
  else
    probe = first[1]
    redis.call('ZREM', held, probe)
    redis.call('ZADD', open, now, probe)
    redis.call('HSET', auth, 'probe', probe, 'next_probe', now + probe_ms)
    redis.call('HSET', base .. 'meta:' .. probe, 'swept', 0)
    probe_gen = redis.call('HINCRBY', base .. 'meta:' .. probe, 'gen', 1)
  end
end
if #again > 0 then redis.call('HINCRBY', stats, 'swept', #again / 2) end
-- Dead letters past their age, or past the count (oldest first), go: a thousand a sweep at most.
local expired = {}
if dead_max_age_ms > 0 then
  expired = redis.call('ZRANGEBYSCORE', dead_idx, '-inf', now - dead_max_age_ms, 'LIMIT', 0, 1000)
end
if dead_max_count > 0 and #expired < 1000 then
  local excess = redis.call('ZCARD', dead_idx) - #expired - dead_max_count
  if excess > 0 then
    for _, id in ipairs(redis.call('ZRANGE', dead_idx, #expired, #expired + math.min(excess, 1000 - #expired) - 1)) do
      expired[#expired + 1] = id
    end
  end
end
-- The debugger's raw answers can echo records: they are kept no longer than dead letters.
if dead_max_age_ms > 0 then
  for _ = 1, 1000 do
    local oldest = redis.call('LINDEX', debug, -1)
    if not oldest or tonumber(cjson.decode(oldest)['time']) * 1000 >= now - dead_max_age_ms then break end
    redis.call('RPOP', debug)
  end
end
if #expired > 0 then
  local gone = 0
  for _, id in ipairs(expired) do
    if remove_dead(id) then gone = gone + 1 end
  end
  redis.call('HINCRBY', stats, 'dead_letters_expired', gone)
end
if hold_ms > 0 then   -- 2,000 visitors a sweep (every 5 s) at most: each call stays short
  local gone = 0
  for _, visitor in ipairs(redis.call('ZRANGEBYSCORE', anon_idx, '-inf', now - hold_ms, 'LIMIT', 0, 2000)) do
    local list = base .. 'anon:' .. visitor
    gone = gone + redis.call('LLEN', list)
    redis.call('DEL', list)
    redis.call('ZREM', anon_idx, visitor)
  end
  if gone > 0 then
    redis.call('DECRBY', anon_count, gone)
    redis.call('HINCRBY', stats, 'anonymous_expired', gone)
    redis.call('HINCRBY', stats, 'filtered', gone)
  end
end
-- Counts that drifted (letters removed by an older version, which kept no counts) heal once none is left.
if redis.call('HLEN', dead) == 0 then redis.call('DEL', dead_kinds) end
local out = {redis.call('ZCARD', open), redis.call('ZCARD', held), redis.call('LLEN', pending), probe, probe_gen}
for _, x in ipairs(again) do out[#out + 1] = x end
return out
