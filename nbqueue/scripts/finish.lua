-- Record the end of a job attempt, if this worker's attempt still holds the job (fencing).
-- A failed attempt with retries left is scheduled again after a growing delay instead.
-- The job's dependents are released (or failed) in the same step (deps.lua).
-- KEYS[1] the queue's active leases, KEYS[2] its failed registry, KEYS[3] its scheduled set,
-- KEYS[4] its recently ended ids (zset), KEYS[5] its counts of ended jobs (hash), KEYS[6] the job's
-- hash, KEYS[7] the job's dependents set, then 5 keys per dependent node (deps.lua)
-- ARGV[1] channel prefix of the queue's jobs, ARGV[2] job id, ARGV[3] worker, ARGV[4] attempt,
-- ARGV[5] status ("finished", "failed", "canceled", or "refused": failed, never retried, as its
-- signature did not match), ARGV[6] ttl in seconds (-1: keep),
-- ARGV[7] jitter factor for the retry delay, ARGV[8] ended ids kept (trimmed 100 at a time: about
-- as many stay), ARGV[9] seconds per counting bucket, ARGV[10] buckets kept (a ring),
-- ARGV[11] default failure ttl in seconds, ARGV[12] the job's ref, ARGV[13] n dependent nodes, then 6
-- values per node (deps.lua), then field/value pairs to store. Only commands of the README's ACL rules.
-- Returns 1 if recorded, 2 if scheduled for a retry, 0 if the attempt no longer holds the job,
-- 3 if the dependents passed are not those in Redis (nothing written: read them and call again).
-- #include deps
local ev, id, worker, attempt, status = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, jitter = tonumber(ARGV[6]), tonumber(ARGV[7])
local refused = status == 'refused'  -- its retries option is not to be trusted
if refused then status = 'failed' end
local key = KEYS[6]
local cur = redis.call('HMGET', key, 'worker', 'attempt', 'status', 'retries', 'retry_delay', 'failures')
if cur[1] ~= worker or cur[2] ~= attempt or cur[3] ~= 'started' then return 0 end
local nodes = deps_nodes(7, 13)
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local fields = {'ended_at', now}
for i = 14 + 6 * #nodes, #ARGV do fields[#fields + 1] = ARGV[i] end
local failures = (tonumber(cur[6]) or 0) + 1
local retry = status == 'failed' and not refused and failures <= (tonumber(cur[4]) or 0)
if not retry and not deps_check(7, nodes, status ~= 'finished') then return 3 end
redis.call('ZREM', KEYS[1], id)
if status == 'failed' then
  redis.call('HSET', key, 'failures', failures)
  if retry then
    local delay = math.min((tonumber(cur[5]) or 1) * 1000 * 2 ^ (failures - 1) * jitter, 3600000)
    redis.call('HSET', key, 'status', 'scheduled', unpack(fields))
    redis.call('ZADD', KEYS[3], t[1] * 1000 + math.floor(t[2] / 1000) + math.floor(delay), id)
    redis.call('PUBLISH', ev .. id, cjson.encode({id = id, status = 'retrying',
      worker = worker, attempt = tonumber(attempt), delay = delay / 1000, t = now}))
    return 2
  end
  redis.call('ZADD', KEYS[2], t[1], id)
end
redis.call('HSET', key, 'status', status, unpack(fields))
redis.call('ZADD', KEYS[4], now, id)
local over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[8])
if over >= 100 then redis.call('ZREM', KEYS[4], unpack(redis.call('ZRANGE', KEYS[4], 0, over - 1))) end
local bucket = math.floor(t[1] / tonumber(ARGV[9]))
local slot = status .. ':' .. (bucket % tonumber(ARGV[10]))
local b, n = string.match(redis.call('HGET', KEYS[5], slot) or '', '^(%d+) (%d+)$')
n = tonumber(b) == bucket and tonumber(n) + 1 or 1  -- a slot last written a lap ago starts again
redis.call('HSET', KEYS[5], slot, bucket .. ' ' .. n)
if ttl >= 0 then redis.call('EXPIRE', key, ttl) end
redis.call('PUBLISH', ev .. id, '{"id":"' .. id .. '","status":"' .. status .. '","worker":"'
  .. worker .. '","attempt":' .. attempt .. ',"t":"' .. now .. '"}')  -- plain names: no escaping
if deps_found then deps_apply(id, ARGV[12], status, 7, nodes, t, tonumber(ARGV[11])) end
return 1
