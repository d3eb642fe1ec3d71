-- One queue's periodic look (the duty holder's, heartbeat.py): what is due, in one cheap step.
-- After a quiet spell with no sweep of the queue (Redis was away, or no worker ran), every held
-- attempt first gets a fresh lease, so the live workers can renew theirs.
-- KEYS[1] the queue's active leases, KEYS[2] time of its last sweep, KEYS[3] its scheduled set,
-- KEYS[4] its schedules. ARGV[1] unused, ARGV[2] lease in ms, ARGV[3] longest quiet spell in ms
-- that is still normal, ARGV[4] at most this many job ids of each kind, ARGV[5] at most this many schedules.
-- Returns {lapsed, due, schedules}: ids whose lease lapsed (for recover.lua), ids of scheduled jobs
-- now due (for promote.lua), and {} or {now ms, name, due ms, ...} of the schedules due (fire.lua).
local lease, quiet, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('SET', KEYS[2], now)
local lapsed = {}
if now - last > quiet then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    redis.call('ZADD', KEYS[1], now + lease, id)
  end
else
  lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)
local fire = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
if #fire > 0 then table.insert(fire, 1, tostring(now)) end
return {lapsed, due, fire}
