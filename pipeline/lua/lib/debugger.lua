-- Shared by the scripts that record a send's outcome (included where a script says "--! include debugger";
-- it expects the locals debug, debug_entry and debug_size): the event debugger keeps this attempt with the
-- newest debug_size, in the same atomic step as the outcome. An empty entry: the debugger is off.
local function record_attempt()
  if debug_entry ~= '' then
    redis.call('LPUSH', debug, debug_entry)
    redis.call('LTRIM', debug, 0, debug_size - 1)
  end
end
