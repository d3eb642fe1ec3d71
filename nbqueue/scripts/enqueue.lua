-- Put one or more new jobs on a queue (or, with a delay, in its scheduled set), all or none.
-- KEYS[1] queue list, KEYS[2] queue wake flag, KEYS[3] the queue's scheduled set, KEYS[3 + i] the
-- hash of job i, and for a unique job (one job, its options holding unique_ttl): then its unique key
-- and the hash of the job the caller saw holding that key (or of the new job, if none).
-- ARGV[1] channel prefix of the queue's jobs, ARGV[2] queue name, ARGV[3] "1" to put the jobs at the
-- front, ARGV[4] delay in ms ("0": now), ARGV[5] "1" if the caller chose ids (so they may exist already),
-- ARGV[6] id of the unique key's holder the caller saw ('': none), ARGV[7] k, then k option field/value
-- pairs stored with every job, then f, and f pairs of function path and source hash,
-- then per job: id, index of its function (1 .. f), data, signature ('': unsigned).
-- Returns the number of jobs written, or an error "NBQ_EXISTS <id>", "NBQ_UNIQUE <id of the job that
-- holds the unique key, queued or running>" (nothing written), or "NBQ_RETRY" (the holder changed).
local ev, queue, at_front, delay = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local check = ARGV[5] == '1'
local k = tonumber(ARGV[7])
local options = {unpack(ARGV, 8, 7 + 2 * k)}
local f = tonumber(ARGV[8 + 2 * k])
local funcs = 9 + 2 * k  -- where the function pairs start
local first = funcs + 2 * f  -- where the jobs start
local m = (#ARGV - first + 1) / 4  -- jobs
if check then
  local seen = {}
  for i = first, #ARGV, 4 do
    local id = ARGV[i]
    if seen[id] or redis.call('EXISTS', KEYS[3 + (i - first) / 4 + 1]) == 1 then
      return redis.error_reply('NBQ_EXISTS ' .. id)
    end
    seen[id] = true
  end
end
local unique = KEYS[4 + m]
if unique then  -- a unique job: refused while another job with its key is queued or running
  local holder = redis.call('GET', unique)
  if holder then
    if holder ~= ARGV[6] then return redis.error_reply('NBQ_RETRY') end
    local held = redis.call('HGET', KEYS[5 + m], 'status')
    if held == 'queued' or held == 'scheduled' or held == 'started' or held == 'deferred' then
      return redis.error_reply('NBQ_UNIQUE ' .. holder)
    end
  end
  local ttl = 0
  for i = 1, #options, 2 do if options[i] == 'unique_ttl' then ttl = tonumber(options[i + 1]) end end
  redis.call('SET', unique, ARGV[first], 'EX', math.max(1, math.floor(ttl)))
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local status = delay > 0 and 'scheduled' or 'queued'
local due = t[1] * 1000 + math.floor(t[2] / 1000) + delay
local ids = {}
local j = 4
for i = first, #ARGV, 4 do
  local id, fn = ARGV[i], funcs + 2 * (tonumber(ARGV[i + 1]) - 1)
  local key = KEYS[j]
  j = j + 1
  if ARGV[i + 3] == '' then  -- unsigned
    redis.call('HSET', key, 'func', ARGV[fn], 'data', ARGV[i + 2], 'code', ARGV[fn + 1],
      'queue', queue, 'status', status, 'enqueued_at', now, unpack(options))
  else
    redis.call('HSET', key, 'func', ARGV[fn], 'data', ARGV[i + 2], 'code', ARGV[fn + 1], 'sig', ARGV[i + 3],
      'queue', queue, 'status', status, 'enqueued_at', now, unpack(options))
  end
  ids[#ids + 1] = id
  if delay > 0 then redis.call('ZADD', KEYS[3], due, id) end
  -- ids and queue names are plain (letters, digits, '_', '-', '.'): no JSON escaping needed
  redis.call('PUBLISH', ev .. id,
    '{"id":"' .. id .. '","status":"' .. status .. '","queue":"' .. queue .. '","t":"' .. now .. '"}')
end
if delay > 0 then return #ids end
if at_front then
  for j = #ids, 1, -1 do redis.call('LPUSH', KEYS[1], ids[j]) end
else
  redis.call('RPUSH', KEYS[1], unpack(ids))
end
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('RPUSH', KEYS[2], '1') end
return #ids
