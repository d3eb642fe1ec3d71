-- Record the end of a job attempt, if this worker's attempt still holds the job (fencing).
-- KEYS[1] active leases, KEYS[2] the queue's failed registry
-- ARGV[1] key prefix, ARGV[2] job id, ARGV[3] worker, ARGV[4] attempt,
-- ARGV[5] status ("finished" or "failed"), ARGV[6] ttl in seconds (-1: keep),
-- then field/value pairs to store (result, or error and exc).
-- Returns 1 if written, 0 if the attempt no longer holds the job.
local prefix, id, worker, attempt, status, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local key = prefix .. 'job:' .. id
local cur = redis.call('HMGET', key, 'worker', 'attempt', 'status')
if cur[1] ~= worker or cur[2] ~= attempt or cur[3] ~= 'started' then return 0 end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
redis.call('HSET', key, 'status', status, 'ended_at', now)
if #ARGV > 6 then redis.call('HSET', key, unpack(ARGV, 7)) end
redis.call('ZREM', KEYS[1], id)
if status == 'failed' then redis.call('ZADD', KEYS[2], t[1], id) end
if ttl >= 0 then redis.call('EXPIRE', key, ttl) end
redis.call('PUBLISH', prefix .. 'ev:' .. id, cjson.encode(
  {id = id, status = status, worker = worker, attempt = tonumber(attempt), t = now}))
return 1
