-- Shared by the scripts that push records to an integration's pending queue (included where a script says
-- "--! include arrivals"; it expects the locals arrivals, flow and now). n records were just pushed:
-- remember when, to within 10 ms, so assemble.lua knows when the oldest record still waiting arrived.
local function mark_arrival(n)
  local total = redis.call('HINCRBY', flow, 'pushed', n)
  local last = redis.call('LINDEX', arrivals, -1)
  local at = last and tonumber(string.match(last, ':(%d+)$'))
  if at and now - at < 10 then
    redis.call('LSET', arrivals, -1, total .. ':' .. at)
  else
    redis.call('RPUSH', arrivals, total .. ':' .. now)
  end
end
