-- Put a failed or canceled job back on its queue, clearing the last attempt's outcome.
-- KEYS: none (the queue is read from the job). ARGV[1] key prefix, ARGV[2] job id
-- Returns 1 if requeued now, else the status that forbade it (nil if there is no such job).
local prefix, id = ARGV[1], ARGV[2]
local key = prefix .. 'job:' .. id
local cur = redis.call('HMGET', key, 'status', 'queue')
if not cur[1] then return nil end
if cur[1] ~= 'failed' and cur[1] ~= 'canceled' then return cur[1] end
local queue = cur[2]
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
redis.call('HDEL', key, 'result', 'summary', 'ssig', 'error', 'exc', 'rsig', 'started_at', 'ended_at', 'worker', 'failures', 'lost',
  'cancel', 'progress')
redis.call('DEL', prefix .. 'log:' .. id)  -- the new attempt's output starts afresh
redis.call('HSET', key, 'status', 'queued', 'enqueued_at', now)
redis.call('PERSIST', key)
redis.call('ZREM', prefix .. 'failed:' .. queue, id)
redis.call('RPUSH', prefix .. 'queue:' .. queue, id)
redis.call('SADD', prefix .. 'queues', queue)
local wake = prefix .. 'wake:' .. queue
if redis.call('LLEN', wake) == 0 then redis.call('RPUSH', wake, '1') end
redis.call('PUBLISH', prefix .. 'ev:' .. id, cjson.encode({id = id, status = 'queued', queue = queue, t = now}))
return 1
