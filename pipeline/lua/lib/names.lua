-- Shared by the forget scripts (included where a script says "--! include names"; it expects the local
-- wanted: a table of the forgotten values as orjson writes them, quotes included, emails in lower case,
-- -> true). names(record) says whether one of the record's identifying fields (identity, objectId, a
-- profile's Email or Identity) holds one of them: a value met anywhere else ("size": "42") names nobody.
-- The cost is a few finds a record, whatever the number of values.
local find, sub, lower, byte, match = string.find, string.sub, string.lower, string.byte, string.match
local function value_at(record, p)  -- the JSON string (quotes included) or number that starts at p
  if byte(record, p) ~= 34 then return match(record, '^-?[%d.eE+]+', p) end
  local q = p
  while true do
    q = find(record, '"', q + 1, true)
    if not q then return nil end
    local b, n = q - 1, 0   -- a quote after an odd number of backslashes is escaped
    while byte(record, b) == 92 do n, b = n + 1, b - 1 end
    if n % 2 == 0 then return sub(record, p, q) end
  end
end
-- identity and objectId: the record's own (the mapper writes them first), never one inside evtData; Email
-- and Identity: a profile's, inside profileData.
local function top_level(record, f)
  local _, e = find(record, f, 1, true)
  if not e then return nil end
  local nested = find(record, '{', 2, true)
  if nested and nested < e then return nil end
  return value_at(record, e + 1)
end
local function wanted_value(v)
  return v and (wanted[v] or (find(v, '@', 1, true) and wanted[lower(v)]))
end
local function names(record)
  if wanted_value(top_level(record, '"identity":')) or wanted_value(top_level(record, '"objectId":')) then
    return true
  end
  local _, p = find(record, '"profileData":{', 1, true)
  if not p then return false end
  for _, f in ipairs({'"Email":', '"Identity":'}) do
    local pos = p
    while true do
      local _, e = find(record, f, pos, true)
      if not e then break end
      if wanted_value(value_at(record, e + 1)) then return true end
      pos = e + 1
    end
  end
  return false
end
