-- Give jobs a worker took ahead, and never began, back to the front of their queue (ahead.py): a
-- stop now, or a job before them that runs long. Each is checked to be still this worker's attempt
-- and not asked to cancel (one asked to cancel stays with the worker, which ends it canceled).
-- KEYS[1] the queue list, KEYS[2] its wake flag, KEYS[3] its active leases, then the hashes of the
-- jobs in ARGV.
-- ARGV[1] channel prefix of the queue's jobs, ARGV[2] worker, ARGV[3] queue name, then pairs of job
-- id and attempt, in the order they would have run.
-- Returns the ids given back.
local ev, worker, queue = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local back = {}
for i = 4, #ARGV, 2 do
  local id, attempt, key = ARGV[i], ARGV[i + 1], KEYS[(i - 4) / 2 + 4]
  local cur = redis.pcall('HMGET', key, 'worker', 'attempt', 'status', 'cancel')
  if cur.err == nil and cur[1] == worker and cur[2] == attempt and cur[3] == 'started' and not cur[4] then
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', key, 'worker', 'started_at')
    redis.call('HSET', key, 'status', 'queued', 'attempt', math.max(0, (tonumber(attempt) or 1) - 1))
    redis.call('PUBLISH', ev .. id, '{"id":"' .. id .. '","status":"queued","queue":"' .. queue .. '","t":"'
      .. now .. '"}')  -- plain names: no escaping
    back[#back + 1] = id
  end
end
for j = #back, 1, -1 do redis.call('LPUSH', KEYS[1], back[j]) end
if #back > 0 and redis.call('LLEN', KEYS[2]) == 0 then redis.call('RPUSH', KEYS[2], '1') end
return back
