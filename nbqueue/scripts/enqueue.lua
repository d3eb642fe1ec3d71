-- Put one or more new jobs on a queue (or, with a delay, in the scheduled set), all or none.
-- KEYS[1] queue set, KEYS[2] queue list, KEYS[3] queue wake flag, KEYS[4] scheduled set
-- ARGV[1] key prefix, ARGV[2] queue name, ARGV[3] "1" to put the jobs at the front,
-- ARGV[4] delay in ms ("0": now), ARGV[5] "1" if the caller chose ids (so they may exist already),
-- then per job: id, func, data, code, n, and n option field/value pairs.
-- Returns the number of jobs written, or an error "NBQ_EXISTS <id>".
local prefix, queue, at_front, delay = ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local check = ARGV[5] == '1'
local starts, seen = {}, {}
local i = 6
while i <= #ARGV do
  local id = ARGV[i]
  if check then
    if seen[id] or redis.call('EXISTS', prefix .. 'job:' .. id) == 1 then
      return redis.error_reply('NBQ_EXISTS ' .. id)
    end
    seen[id] = true
  end
  starts[#starts + 1] = i
  i = i + 5 + 2 * tonumber(ARGV[i + 4])
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local status = delay > 0 and 'scheduled' or 'queued'
local due = t[1] * 1000 + math.floor(t[2] / 1000) + delay
local ids = {}
for _, j in ipairs(starts) do
  local id = ARGV[j]
  local key = prefix .. 'job:' .. id
  local n = tonumber(ARGV[j + 4])
  redis.call('HSET', key, 'func', ARGV[j + 1], 'data', ARGV[j + 2], 'code', ARGV[j + 3],
    'queue', queue, 'status', status, 'enqueued_at', now)
  if n > 0 then redis.call('HSET', key, unpack(ARGV, j + 5, j + 4 + 2 * n)) end
  ids[#ids + 1] = id
  if delay > 0 then redis.call('ZADD', KEYS[4], due, id) end
  -- ids and queue names are plain (letters, digits, '_', '-', '.'): no JSON escaping needed
  redis.call('PUBLISH', prefix .. 'ev:' .. id,
    '{"id":"' .. id .. '","status":"' .. status .. '","queue":"' .. queue .. '","t":"' .. now .. '"}')
end
redis.call('SADD', KEYS[1], queue)
if delay > 0 then return #ids end
if at_front then
  for k = #ids, 1, -1 do redis.call('LPUSH', KEYS[2], ids[k]) end
else
  redis.call('RPUSH', KEYS[2], unpack(ids))
end
if redis.call('LLEN', KEYS[3]) == 0 then redis.call('RPUSH', KEYS[3], '1') end
return #ids
