-- Cancel a job: a queued or scheduled one at once; a started one by asking its worker
-- (on the channel ctl:<worker>) to stop it, which then records it canceled.
-- KEYS[1] scheduled set. ARGV[1] key prefix, ARGV[2] job id, ARGV[3] default ttl in seconds
-- (a job canceled now is kept for its own result_ttl if it has one, as a finished job is)
-- Returns 1 if canceled now, 2 if the worker was asked, else the status that forbids it
-- (nil if there is no such job).
local prefix, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = prefix .. 'job:' .. id
local cur = redis.call('HMGET', key, 'status', 'queue', 'worker', 'attempt', 'result_ttl')
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
if cur[5] ~= 'none' then redis.call('EXPIRE', key, math.max(1, math.floor(tonumber(cur[5]) or ttl))) end
redis.call('PUBLISH', prefix .. 'ev:' .. id, cjson.encode({id = id, status = 'canceled', t = now}))
return 1
