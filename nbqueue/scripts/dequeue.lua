-- Take the next job from the first non-empty queue and record who holds it, in one step.
-- KEYS[1] active leases (zset: job id -> lease deadline in ms),
-- KEYS[2 .. n+1] queue lists in priority order, KEYS[n+2 .. 2n+1] their wake flags,
-- KEYS[2n+2] the suspension flag (``nbqueue suspend``)
-- ARGV[1] key prefix, ARGV[2] worker name, ARGV[3] lease in ms, ARGV[4 .. n+3] queue names
-- Returns {queue, id, attempt, func, data, code, timeout, result_ttl, failure_ttl, retries, retry_delay,
-- lost_retries, sig, on_success, on_failure, deps, dependents} or nil: the call, the options the worker
-- acts on, their signature, its callbacks, the ids of the jobs whose results it takes (nil: none;
-- flow.py) and whether jobs wait for it; {'suspended'} while workers are suspended (nothing is taken).
-- Leaves each wake flag set exactly when its queue still holds jobs, so an idle worker
-- blocked on the flags wakes for the jobs this worker did not take.
local prefix, worker, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = (#KEYS - 2) / 2
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return {'suspended'} end
local taken
for q = 1, n do
  while not taken do
    local id = redis.call('LPOP', KEYS[1 + q])
    if not id then break end
    local key = prefix .. 'job:' .. id
    local cur = redis.call('HMGET', key, 'status', 'workers', 'attempt')
    if cur[1] == 'queued' then
      local t = redis.call('TIME')
      local now = t[1] .. '.' .. string.format('%06d', t[2])
      local attempt = math.floor(tonumber(cur[3]) or 0) + 1  -- no error (and no lost pop) on a field broken by hand
      redis.call('HSET', key, 'status', 'started', 'worker', worker, 'started_at', now, 'attempt', attempt,
        'workers', cur[2] and (cur[2] .. ' ' .. worker) or worker)
      redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000) + lease, id)
      redis.call('PUBLISH', prefix .. 'ev:' .. id, '{"id":"' .. id .. '","status":"started","worker":"'
        .. worker .. '","attempt":' .. attempt .. ',"t":"' .. now .. '"}')  -- plain names: no escaping
      local f = redis.call('HMGET', key, 'func', 'data', 'code', 'timeout', 'result_ttl', 'failure_ttl',
        'retries', 'retry_delay', 'lost_retries', 'sig', 'on_success', 'on_failure', 'deps', 'dependents')
      taken = {ARGV[3 + q], id, attempt, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12],
        f[13], f[14]}  -- a missing field is false here, nil in the reply: the array stays whole
    end
    -- an id whose job is gone (deleted, expired) or no longer queued is dropped
  end
  if taken then break end
end
for q = 1, n do
  if redis.call('LLEN', KEYS[1 + q]) > 0 then
    if redis.call('LLEN', KEYS[1 + n + q]) == 0 then redis.call('RPUSH', KEYS[1 + n + q], '1') end
  else
    redis.call('DEL', KEYS[1 + n + q])
  end
end
return taken
