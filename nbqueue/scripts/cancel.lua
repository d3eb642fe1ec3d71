-- Cancel a job: a queued or scheduled one at once; a started one by asking its worker
-- (on the channel ctl:<worker>) to stop it, which then records it canceled.
-- KEYS[1] scheduled set. ARGV[1] key prefix, ARGV[2] job id, ARGV[3] ttl in seconds
-- Returns 1 if canceled now, 2 if the worker was asked, else the status that forbids it
-- (nil if there is no such job).
local prefix, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = prefix .. 'job:' .. id
local cur = redis.call('HMGET', key, 'status', 'queue', 'worker', 'attempt')
if not cur[1] then return nil end
if cur[1] == 'started' then
  redis.call('HSET', key, 'cancel', '1')
  redis.call('PUBLISH', prefix .. 'ctl:' .. cur[3], cjson.encode({cancel = id, attempt = cur[4]}))
  return 2
end
if cur[1] == 'queued' then
  redis.call('LREM', prefix .. 'queue:' .. cur[2], 1, id)
elseif cur[1] == 'scheduled' then
  redis.call('ZREM', KEYS[1], id)
else
  return cur[1]
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
redis.call('HSET', key, 'status', 'canceled', 'ended_at', now)
redis.call('EXPIRE', key, ttl)
redis.call('PUBLISH', prefix .. 'ev:' .. id, cjson.encode({id = id, status = 'canceled', t = now}))
return 1
