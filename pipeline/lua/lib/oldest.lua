-- Shared by the scripts that cut batches from the pending queue (included where a script says
-- "--! include oldest"; it expects the locals arrivals, flow and now): when the oldest record still
-- pending arrived, in ms (arrivals holds "records pushed in all so far:ms" marks, flow counts records
-- pushed and cut), dropping the marks of records already cut.
local function oldest_waiting()
  local cut = tonumber(redis.call('HGET', flow, 'cut') or '0')
  while true do
    local first = redis.call('LINDEX', arrivals, 0)
    if not first then return now end
    local total, at = string.match(first, '^(%d+):(%d+)$')
    if tonumber(total) > cut then return tonumber(at) end
    redis.call('LPOP', arrivals)
  end
end
