-- The schedules due now (Redis's clock), for a worker's heartbeat: one cheap read, nothing written.
-- KEYS[1] schedules set. ARGV[1] key prefix, ARGV[2] at most this many.
-- Returns {} when none is due, else {now ms, name, due ms, name, due ms, ...}.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return due end
table.insert(due, 1, tostring(now))
return due
