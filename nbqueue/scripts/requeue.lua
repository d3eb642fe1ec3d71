-- Put a failed or canceled job back on its queue, clearing the last attempt's outcome.
-- KEYS[1] the job's hash, KEYS[2] its log, KEYS[3] its queue's failed registry, KEYS[4] the queue
-- list, KEYS[5] the queue's wake flag.
-- ARGV[1] channel prefix of the queue's jobs, ARGV[2] job id, ARGV[3] the queue's name.
-- Returns 1 if requeued now, 4 if the job is of another queue than ARGV[3] (nothing written: read its
-- queue and call again), else the status that forbade it (nil if there is no such job).
local ev, id, queue = ARGV[1], ARGV[2], ARGV[3]
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'status', 'queue')
if not cur[1] then return nil end
if cur[1] ~= 'failed' and cur[1] ~= 'canceled' then return cur[1] end
if cur[2] ~= queue then return 4 end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
redis.call('HDEL', key, 'result', 'summary', 'ssig', 'error', 'exc', 'rsig', 'started_at', 'ended_at', 'worker', 'failures', 'lost',
  'cancel', 'progress')
redis.call('DEL', KEYS[2])  -- the new attempt's output starts afresh
redis.call('HSET', key, 'status', 'queued', 'enqueued_at', now)
redis.call('PERSIST', key)
redis.call('ZREM', KEYS[3], id)
redis.call('RPUSH', KEYS[4], id)
if redis.call('LLEN', KEYS[5]) == 0 then redis.call('RPUSH', KEYS[5], '1') end
redis.call('PUBLISH', ev .. id, cjson.encode({id = id, status = 'queued', queue = queue, t = now}))
return 1
