-- Shared by the scripts that end a worker's turn at a batch (included where a script says
-- "--! include lease"; it expects the locals base, bid and owner). meta and lease are the batch's keys;
-- batch_left() drops this worker's lease (never another's) and says whether the batch is still there: a
-- batch finished elsewhere meanwhile is left alone.
local meta, lease = base .. 'meta:' .. bid, base .. 'lease:' .. bid
local function batch_left()
  if redis.call('GET', lease) == owner then redis.call('DEL', lease) end
  return redis.call('EXISTS', meta) == 1
end
