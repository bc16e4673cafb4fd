-- Shared by every script that reads the clock (included where a script says "--! include now"): now is
-- Redis's TIME in epoch milliseconds, the one clock every host shares (leases, due times, dead letters).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
