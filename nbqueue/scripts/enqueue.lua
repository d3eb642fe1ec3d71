-- Put one or more new jobs on a queue (or, with a delay, in the scheduled set), all or none.
-- KEYS[1] queue set, KEYS[2] queue list, KEYS[3] queue wake flag, KEYS[4] scheduled set,
-- and for a unique job (one job, its options holding unique_ttl): KEYS[5] its unique key, KEYS[6] the
-- job hash of the job the caller saw holding that key (or of the new job, if none)
-- ARGV[1] key prefix, ARGV[2] queue name, ARGV[3] "1" to put the jobs at the front,
-- ARGV[4] delay in ms ("0": now), ARGV[5] "1" if the caller chose ids (so they may exist already),
-- ARGV[6] k, then k option field/value pairs stored with every job,
-- then f, and f pairs of function path and source hash,
-- then per job: id, index of its function (1 .. f), data, signature ('': unsigned).
-- Returns the number of jobs written, or an error "NBQ_EXISTS <id>", "NBQ_UNIQUE <id of the job that
-- holds the unique key, queued or running>" (nothing written), or "NBQ_RETRY" (the holder changed).
local prefix, queue, at_front, delay = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local check = ARGV[5] == '1'
local k = tonumber(ARGV[6])
local options = {unpack(ARGV, 7, 6 + 2 * k)}
local f = tonumber(ARGV[7 + 2 * k])
local funcs = 8 + 2 * k  -- where the function pairs start
local first = funcs + 2 * f  -- where the jobs start
if check then
  local seen = {}
  for i = first, #ARGV, 4 do
    local id = ARGV[i]
    if seen[id] or redis.call('EXISTS', prefix .. 'job:' .. id) == 1 then
      return redis.error_reply('NBQ_EXISTS ' .. id)
    end
    seen[id] = true
  end
end
if KEYS[5] then  -- a unique job: refused while another job with its key is queued or running
  local holder = redis.call('GET', KEYS[5])
  if holder then
    if KEYS[6] ~= prefix .. 'job:' .. holder then return redis.error_reply('NBQ_RETRY') end
    local held = redis.call('HGET', KEYS[6], 'status')
    if held == 'queued' or held == 'scheduled' or held == 'started' or held == 'deferred' then
      return redis.error_reply('NBQ_UNIQUE ' .. holder)
    end
  end
  local ttl = 0
  for i = 1, #options, 2 do if options[i] == 'unique_ttl' then ttl = tonumber(options[i + 1]) end end
  redis.call('SET', KEYS[5], ARGV[first], 'EX', math.max(1, math.floor(ttl)))
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local status = delay > 0 and 'scheduled' or 'queued'
local due = t[1] * 1000 + math.floor(t[2] / 1000) + delay
local ids = {}
for i = first, #ARGV, 4 do
  local id, fn = ARGV[i], funcs + 2 * (tonumber(ARGV[i + 1]) - 1)
  local key = prefix .. 'job:' .. id
  if ARGV[i + 3] == '' then  -- unsigned
    redis.call('HSET', key, 'func', ARGV[fn], 'data', ARGV[i + 2], 'code', ARGV[fn + 1],
      'queue', queue, 'status', status, 'enqueued_at', now, unpack(options))
  else
    redis.call('HSET', key, 'func', ARGV[fn], 'data', ARGV[i + 2], 'code', ARGV[fn + 1], 'sig', ARGV[i + 3],
      'queue', queue, 'status', status, 'enqueued_at', now, unpack(options))
  end
  ids[#ids + 1] = id
  if delay > 0 then redis.call('ZADD', KEYS[4], due, id) end
  -- ids and queue names are plain (letters, digits, '_', '-', '.'): no JSON escaping needed
  redis.call('PUBLISH', prefix .. 'ev:' .. id,
    '{"id":"' .. id .. '","status":"' .. status .. '","queue":"' .. queue .. '","t":"' .. now .. '"}')
end
redis.call('SADD', KEYS[1], queue)
if delay > 0 then return #ids end
if at_front then
  for j = #ids, 1, -1 do redis.call('LPUSH', KEYS[2], ids[j]) end
else
  redis.call('RPUSH', KEYS[2], unpack(ids))
end
if redis.call('LLEN', KEYS[3]) == 0 then redis.call('RPUSH', KEYS[3], '1') end
return #ids
