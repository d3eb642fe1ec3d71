-- Deal with attempts whose lease lapsed (worker killed, hung, or cut off): put the job back
-- at the front of its queue, or fail it with "worker lost" once its re-runs are used up.
-- After a quiet spell with no heartbeat from any worker (Redis was away, or no worker ran),
-- every held attempt first gets a fresh lease, so the live workers can renew theirs.
-- KEYS[1] active leases, KEYS[2] time of the last heartbeat of any worker
-- ARGV[1] key prefix, ARGV[2] default number of re-runs after a lost worker, ARGV[3] at most
-- this many jobs per call, ARGV[4] default failure ttl in seconds, ARGV[5] lease in ms,
-- ARGV[6] longest quiet spell in ms that is still normal, ARGV[7] default result (and cancel) ttl in seconds.
-- A job canceled or failed here is kept for its own result_ttl / failure_ttl, as on the other paths.
-- Returns the ids dealt with.
local prefix, default_reruns, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local lease, quiet = tonumber(ARGV[5]), tonumber(ARGV[6])
local function expire(key, ttl, default)  -- ttl: the job's field ('none': keep it), else the default
  if ttl == 'none' then return end
  redis.call('EXPIRE', key, math.max(1, math.floor(tonumber(ttl) or tonumber(default))))
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local now = t[1] .. '.' .. string.format('%06d', t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('SET', KEYS[2], now_ms)
if now_ms - last > quiet then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    redis.call('ZADD', KEYS[1], now_ms + lease, id)
  end
  return {}
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = prefix .. 'job:' .. id
  local cur = redis.call('HMGET', key, 'status', 'queue', 'worker', 'lost_retries', 'cancel', 'failure_ttl', 'attempt',
    'result_ttl')
  if cur[1] == 'started' then
    local lost = (tonumber(redis.call('HGET', key, 'lost')) or 0) + 1
    redis.call('HSET', key, 'lost', lost)
    local event = {id = id, worker = cur[3], attempt = tonumber(cur[7]), t = now}
    event.status = 'lost'
    redis.call('PUBLISH', prefix .. 'ev:' .. id, cjson.encode(event))
    if cur[5] then
      redis.call('HSET', key, 'status', 'canceled', 'ended_at', now,
        'exc', 'Canceled: the job was canceled while it ran (its worker was lost before it could stop it)')
      expire(key, cur[8], ARGV[7])
      event.status = 'canceled'
    elseif lost <= (tonumber(cur[4]) or tonumber(default_reruns)) then
      redis.call('HSET', key, 'status', 'queued')
      redis.call('LPUSH', prefix .. 'queue:' .. cur[2], id)
      local wake = prefix .. 'wake:' .. cur[2]
      if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
      event.status = 'queued'
      event.queue = cur[2]
    else
      local line = 'WorkerLost: the worker ' .. tostring(cur[3]) .. ' holding the job stopped renewing its lease '
        .. '(killed, hung or cut off from Redis); its workers were lost ' .. lost .. ' time(s), more than its lost_retries allow'
      redis.call('HSET', key, 'status', 'failed', 'ended_at', now, 'exc', line, 'error', line .. '\n')
      redis.call('ZADD', prefix .. 'failed:' .. cur[2], t[1], id)
      expire(key, cur[6], ARGV[4])
      event.status = 'failed'
    end
    redis.call('PUBLISH', prefix .. 'ev:' .. id, cjson.encode(event))
  end
end
return ids
