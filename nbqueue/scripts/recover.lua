-- Deal with attempts whose lease lapsed (worker killed, hung, or cut off): put the job back
-- at the front of its queue, or fail it with "worker lost" once its re-runs are used up.
-- KEYS[1] the queue's active leases, KEYS[2] the queue list, KEYS[3] its wake flag, KEYS[4] its
-- failed registry, then the hashes of the jobs in ARGV (read lapsed by sweep.lua; each lease is
-- checked again here, so one renewed or taken over meanwhile is left alone).
-- ARGV[1] channel prefix of the queue's jobs, ARGV[2] default number of re-runs after a lost worker,
-- ARGV[3] the queue's name, ARGV[4] default failure ttl in seconds, ARGV[5] default result (and
-- cancel) ttl in seconds, then job ids.
-- A job canceled or failed here is kept for its own result_ttl / failure_ttl, as on the other paths.
-- Returns the ids dealt with.
local ev, default_reruns, queue = ARGV[1], ARGV[2], ARGV[3]
local function expire(key, ttl, default)  -- ttl: the job's field ('none': keep it), else the default
  if ttl == 'none' then return end
  redis.call('EXPIRE', key, math.max(1, math.floor(tonumber(ttl) or tonumber(default))))
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local now = t[1] .. '.' .. string.format('%06d', t[2])
local ids = {}
for i = 6, #ARGV do
  local id, key = ARGV[i], KEYS[i - 1]
  local deadline = tonumber(redis.call('ZSCORE', KEYS[1], id))
  if deadline and deadline <= now_ms then
    ids[#ids + 1] = id
    redis.call('ZREM', KEYS[1], id)
    local cur = redis.call('HMGET', key, 'status', 'queue', 'worker', 'lost_retries', 'cancel', 'failure_ttl',
      'attempt', 'result_ttl')
    if cur[1] == 'started' and cur[2] == queue then
      local lost = (tonumber(redis.call('HGET', key, 'lost')) or 0) + 1
      redis.call('HSET', key, 'lost', lost)
      local event = {id = id, worker = cur[3], attempt = tonumber(cur[7]), t = now}
      event.status = 'lost'
      redis.call('PUBLISH', ev .. id, cjson.encode(event))
      if cur[5] then
        redis.call('HSET', key, 'status', 'canceled', 'ended_at', now,
          'exc', 'Canceled: the job was canceled while it ran (its worker was lost before it could stop it)')
        expire(key, cur[8], ARGV[5])
        event.status = 'canceled'
      elseif lost <= (tonumber(cur[4]) or tonumber(default_reruns)) then
        redis.call('HSET', key, 'status', 'queued')
        redis.call('LPUSH', KEYS[2], id)
        if redis.call('LLEN', KEYS[3]) == 0 then redis.call('RPUSH', KEYS[3], '1') end
        event.status = 'queued'
        event.queue = queue
      else
        local line = 'WorkerLost: the worker ' .. tostring(cur[3]) .. ' holding the job stopped renewing its lease '
          .. '(killed, hung or cut off from Redis); its workers were lost ' .. lost .. ' time(s), more than its lost_retries allow'
        redis.call('HSET', key, 'status', 'failed', 'ended_at', now, 'exc', line, 'error', line .. '\n')
        redis.call('ZADD', KEYS[4], t[1], id)
        expire(key, cur[6], ARGV[4])
        event.status = 'failed'
      end
      redis.call('PUBLISH', ev .. id, cjson.encode(event))
    end
  end
end
return ids
