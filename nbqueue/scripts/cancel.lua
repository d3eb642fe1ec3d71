-- Cancel a job: a queued, scheduled or deferred one at once (its dependents are failed in the same
-- step, deps.lua); a started one by asking its worker (on the channel ctl:<worker>) to stop it, which
-- then records it canceled (finish.lua).
-- KEYS[1] the job's hash, KEYS[2] its queue's list, KEYS[3] its queue's scheduled set, KEYS[4] the
-- job's dependents set, then 5 keys per dependent node (deps.lua).
-- ARGV[1] channel prefix of the queue's jobs, ARGV[2] job id, ARGV[3] default ttl in seconds
-- (a job canceled now is kept for its own result_ttl if it has one, as a finished job is),
-- ARGV[4] default failure ttl in seconds, ARGV[5] the queue's name, ARGV[6] the prefix of workers'
-- control channels, ARGV[7] the job's ref, ARGV[8] n dependent nodes, then 6 values per node.
-- Returns 1 if canceled now, 2 if the worker was asked, 3 if the dependents passed are not those in
-- Redis (nothing written: read them and call again), 4 if the job is of another queue than ARGV[5]
-- (nothing written: read its queue and call again), else the status that forbids it
-- (nil if there is no such job).
-- #include deps
local ev, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = KEYS[1]
local cur = redis.call('HMGET', key, 'status', 'queue', 'worker', 'attempt', 'result_ttl')
if not cur[1] then return nil end
if cur[1] == 'started' then
  redis.call('HSET', key, 'cancel', '1')
  redis.call('PUBLISH', ARGV[6] .. cur[3], cjson.encode({cancel = id, attempt = cur[4]}))
  return 2
end
if cur[1] ~= 'queued' and cur[1] ~= 'scheduled' and cur[1] ~= 'deferred' then return cur[1] end
if cur[2] ~= ARGV[5] then return 4 end
local nodes = deps_nodes(4, 8)
if not deps_check(4, nodes, true) then return 3 end
if cur[1] == 'queued' then
  redis.call('LREM', KEYS[2], 1, id)
elseif cur[1] == 'scheduled' then
  redis.call('ZREM', KEYS[3], id)
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
redis.call('HSET', key, 'status', 'canceled', 'ended_at', now)
if cur[5] ~= 'none' then redis.call('EXPIRE', key, math.max(1, math.floor(tonumber(cur[5]) or ttl))) end
redis.call('PUBLISH', ev .. id, cjson.encode({id = id, status = 'canceled', t = now}))
deps_apply(id, ARGV[7], 'canceled', 4, nodes, t, tonumber(ARGV[4]))
return 1
