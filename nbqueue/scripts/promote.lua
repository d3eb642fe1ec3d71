-- Move scheduled jobs whose time has come (delayed jobs, retries) to the back of their queues.
-- KEYS[1] scheduled set. ARGV[1] key prefix, ARGV[2] at most this many jobs per call.
-- Returns the number of jobs moved.
local prefix, limit = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t[1] * 1000 + math.floor(t[2] / 1000), 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = prefix .. 'job:' .. id
  local cur = redis.call('HMGET', key, 'status', 'queue')
  if cur[1] == 'scheduled' then
    redis.call('HSET', key, 'status', 'queued')
    redis.call('RPUSH', prefix .. 'queue:' .. cur[2], id)
    local wake = prefix .. 'wake:' .. cur[2]
    if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
    redis.call('PUBLISH', prefix .. 'ev:' .. id, cjson.encode({id = id, status = 'queued', queue = cur[2], t = now}))
  end
end
return #ids
