-- Move a queue's scheduled jobs whose time has come (delayed jobs, retries) to the back of the queue.
-- KEYS[1] the queue's scheduled set, KEYS[2] the queue list, KEYS[3] its wake flag, then the hashes
-- of the jobs in ARGV (read due by sweep.lua; each is checked again here).
-- ARGV[1] channel prefix of the queue's jobs, ARGV[2] the queue's name, then job ids.
-- Returns the number of jobs moved.
local ev, queue = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local moved = 0
for i = 3, #ARGV do
  local id, key = ARGV[i], KEYS[i + 1]
  local due = tonumber(redis.call('ZSCORE', KEYS[1], id))
  if due and due <= now_ms then
    redis.call('ZREM', KEYS[1], id)
    moved = moved + 1
    local cur = redis.call('HMGET', key, 'status', 'queue')
    if cur[1] == 'scheduled' and cur[2] == queue then
      redis.call('HSET', key, 'status', 'queued')
      redis.call('RPUSH', KEYS[2], id)
      if redis.call('LLEN', KEYS[3]) == 0 then redis.call('RPUSH', KEYS[3], '1') end
      redis.call('PUBLISH', ev .. id, cjson.encode({id = id, status = 'queued', queue = queue, t = now}))
    end
  end
end
return moved
