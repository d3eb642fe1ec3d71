-- Cancel a queued job: take it off its queue and mark it canceled.
-- KEYS: none (the queue is read from the job). ARGV[1] key prefix, ARGV[2] job id, ARGV[3] ttl in seconds
-- Returns 1 if canceled now, else the status that forbade it (nil if there is no such job).
local prefix, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = prefix .. 'job:' .. id
local cur = redis.call('HMGET', key, 'status', 'queue')
if not cur[1] then return nil end
if cur[1] ~= 'queued' then return cur[1] end
redis.call('LREM', prefix .. 'queue:' .. cur[2], 1, id)
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
redis.call('HSET', key, 'status', 'canceled', 'ended_at', now)
redis.call('EXPIRE', key, ttl)
redis.call('PUBLISH', prefix .. 'ev:' .. id, cjson.encode({id = id, status = 'canceled', t = now}))
return 1
