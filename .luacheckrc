-- luacheck (Debian's lua-check) for pipeline/lua: `make lint` runs it on the sources and, through
-- `python -m pipeline.local.lualint`, on each script with its includes expanded, as Redis runs it.
std = "lua51"
-- What Redis gives a script. Nothing else is global: a script that writes one fails the check.
read_globals = { "redis", "KEYS", "ARGV", "cjson", "cmsgpack", "bit", "struct" }
max_line_length = 120

-- A lib/ snippet is pasted into the scripts that include it, so it reads locals they define (declared
-- here, per snippet) and defines functions some includers leave unused.
local lib = { unused = false }
files["pipeline/lua/lib/now.lua"] = lib
files["pipeline/lua/lib/arrivals.lua"] = { unused = false, read_globals = { "arrivals", "flow", "now" } }
files["pipeline/lua/lib/dead.lua"] = { unused = false, read_globals = { "dead", "dead_idx", "dead_kinds" } }
files["pipeline/lua/lib/debugger.lua"] = {
  unused = false, read_globals = { "debug", "debug_entry", "debug_size" },
}
files["pipeline/lua/lib/lease.lua"] = { unused = false, read_globals = { "base", "bid", "owner" } }
files["pipeline/lua/lib/names.lua"] = { unused = false, read_globals = { "wanted" } }
files["pipeline/lua/lib/settle.lua"] = { unused = false, read_globals = { "base", "bid", "meta", "now" } }
files["pipeline/lua/lib/oldest.lua"] = { unused = false, read_globals = { "arrivals", "flow", "now" } }
