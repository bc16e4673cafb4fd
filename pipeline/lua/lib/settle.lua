-- Shared by the scripts that end a batch (included where a script says "--! include settle"; it expects
-- the locals base, bid and meta, and now). A batch cut from an import's backfill lane (meta 'import') is
-- settled: its records leave the import's window (isize: the records it held when cut, so a forget that
-- rewrote it meanwhile frees the same room), the import counts what was delivered and dead-lettered, and
-- an import whose file is read and whose every record settled is done.
local function settle(delivered_n, dead_n)
  local m = redis.call('HMGET', meta, 'import', 'isize', 'run')
  if not m[1] then return end
  redis.call('SREM', base .. 'import:open', bid)
  local imp = base .. 'import:' .. m[1]
  -- gone, or started again since (a cancelled import run anew): this batch is not the new run's
  if (redis.call('HGET', imp, 'run') or '1') ~= (m[3] or '1') then return end
  local settled = redis.call('HINCRBY', imp, 'settled', tonumber(m[2] or '0'))
  if delivered_n > 0 then redis.call('HINCRBY', imp, 'delivered', delivered_n) end
  if dead_n > 0 then redis.call('HINCRBY', imp, 'dead', dead_n) end
  if redis.call('HGET', imp, 'state') == 'read' and settled >= tonumber(redis.call('HGET', imp, 'queued') or '0')
      and redis.call('LLEN', imp .. ':records') == 0 then
    redis.call('HSET', imp, 'state', 'done', 'finished', now)
    redis.call('ZREM', base .. 'imports', m[1])
  end
end
