-- Queue one chunk of an import's rows in its backfill lane, with the checkpoint, in one step: the records
-- (joined by newlines), the rows refused as mapping dead letters, counters, and the number of rows read
-- so far. Written only if the checkpoint is still where the caller read from (rows == ARGV[1]): a second
-- importer of the same file, or this call sent twice, never queues a row twice. Refused while the
-- import's records in Redis (queued, not yet settled) would pass the window.
-- Returns {1, records now in the window}, {0} when the checkpoint already says ARGV[2] (this call ran),
-- {-1, in the window} when the window is full (nothing written: wait for delivery), {-2} when the
-- caller's view of the forgotten users is out of date, {-3, state} when the import is not running
-- (cancelled), {-4, rows} when another importer moved the checkpoint elsewhere.
local imp, stats, dead, dead_idx, dead_kinds, forgotten_gen = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local from, to, blob, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local letters = cjson.decode(ARGV[5])   -- [[dead letter id, entry], ...]
local counters = cjson.decode(ARGV[6])  -- {field: increment} for the import and the integration's stats
local window = tonumber(ARGV[7])
local position = ARGV[9]                -- bytes of the file read after this chunk ('' from standard input)

--! include now

--! include dead

local state = redis.call('HGET', imp, 'state')
if state ~= 'running' then return {-3, state or 'gone'} end
local rows = redis.call('HGET', imp, 'rows') or '0'
if rows == to then return {0} end
if rows ~= from then return {-4, rows} end
if (redis.call('GET', forgotten_gen) or '0') ~= ARGV[8] then return {-2} end
local held = tonumber(redis.call('HGET', imp, 'queued')) - tonumber(redis.call('HGET', imp, 'settled'))
-- the lane cuts a partial batch once a chunk this size no longer fits (assemble_backfill.lua)
redis.call('HSET', imp, 'window', window, 'chunk', count)
if count > 0 and held + count > window then return {-1, held} end
local records, buf, pos = imp .. ':records', {}, 1
local find, sub = string.find, string.sub
for _ = 1, count do
  local e = find(blob, '\n', pos, true)
  buf[#buf + 1] = sub(blob, pos, (e or 0) - 1)
  pos = (e or #blob) + 1
  if #buf >= 1000 then redis.call('RPUSH', records, unpack(buf)); buf = {} end
end
if #buf > 0 then redis.call('RPUSH', records, unpack(buf)) end
for _, letter in ipairs(letters) do add_dead(letter[1], letter[2], now) end
redis.call('HINCRBY', imp, 'queued', count)
redis.call('HSET', imp, 'rows', to, 'updated', now)
if position ~= '' then redis.call('HSET', imp, 'bytes', position) end
redis.call('HINCRBY', stats, 'imported', count)
if #letters > 0 then
  redis.call('HINCRBY', imp, 'refused', #letters)
  redis.call('HINCRBY', stats, 'rejected_mapping', #letters)
end
for field, n in pairs(counters) do redis.call('HINCRBY', imp, field, n) end
return {1, held + count}
