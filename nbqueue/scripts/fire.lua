-- Fire one tick of a schedule (or several missed ones): queue its jobs and advance it, atomically,
-- only if the schedule is still as the caller read it, so one worker wins each tick.
-- KEYS[1] the queue's schedules, KEYS[2] the schedule's hash, KEYS[3] queue list,
-- KEYS[4] queue wake flag, KEYS[5 ..] the new jobs' hashes.
-- ARGV[1] unused, ARGV[2] schedule name, ARGV[3] due time exactly as sweep.lua read it, ARGV[4] token as read,
-- ARGV[5] next due ms ('' : drop the schedule if its hash is gone), ARGV[6] error text to record ('' : none),
-- ARGV[7] queue name, ARGV[8] func, ARGV[9] code, ARGV[10] data, ARGV[11] k, then k option pairs,
-- then per job: id, signature ('' : unsigned), event channel, the tick (ms) it is for.
-- Each job hash gets the usual fields plus 'schedule' (the name) and 'tick'.
-- Returns the number of jobs queued, or -1 if another worker (or a client) changed the schedule first.
local name = ARGV[2]
if ARGV[5] == '' then  -- a name in the set without a hash: junk, or removed meanwhile
  if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('ZSCORE', KEYS[1], name) == ARGV[3] then
    redis.call('ZREM', KEYS[1], name)
  end
  return 0
end
if redis.call('ZSCORE', KEYS[1], name) ~= ARGV[3]
    or (redis.call('HGET', KEYS[2], 'token') or '') ~= ARGV[4] then
  return -1
end
local queue, func, code, data = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local k = tonumber(ARGV[11])
local options = {unpack(ARGV, 12, 11 + 2 * k)}
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local ids = {}
local j = 5
for i = 12 + 2 * k, #ARGV, 4 do
  local id, sig, channel, tick = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  redis.call('HSET', KEYS[j], 'func', func, 'data', data, 'code', code, 'queue', queue, 'status', 'queued',
    'enqueued_at', now, 'schedule', name, 'tick', tick, unpack(options))
  if sig ~= '' then redis.call('HSET', KEYS[j], 'sig', sig) end
  redis.call('PUBLISH', channel,
    '{"id":"' .. id .. '","status":"queued","queue":"' .. queue .. '","t":"' .. now .. '"}')
  ids[#ids + 1] = id
  j = j + 1
end
if #ids > 0 then
  redis.call('RPUSH', KEYS[3], unpack(ids))
  if redis.call('LLEN', KEYS[4]) == 0 then redis.call('RPUSH', KEYS[4], '1') end
  redis.call('HSET', KEYS[2], 'last_job', ids[#ids], 'last_run', t[1] * 1000 + math.floor(t[2] / 1000))
  redis.call('HINCRBY', KEYS[2], 'fired', #ids)
end
if ARGV[6] == '' then redis.call('HDEL', KEYS[2], 'error') else redis.call('HSET', KEYS[2], 'error', ARGV[6]) end
redis.call('HSET', KEYS[2], 'next', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[5], name)
return #ids
