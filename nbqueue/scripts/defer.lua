-- Enqueue jobs that depend on other jobs (a Job or Group among their arguments, or depends_on), all
-- or none. A job whose dependencies all finished is queued at once; else it waits 'deferred' (in no
-- queue list, so no worker polls for it) and is added to the dependents set of each dependency that
-- has not ended, which the script recording that dependency's end releases (deps.lua). A dependency
-- that failed or was canceled already fails the job at once, unless the job allows failure. The check
-- and the write are one step: no dependency can end in between unseen.
-- KEYS[1] queue list, KEYS[2] queue wake flag, KEYS[3] the queue's failed registry,
-- then per job: its hash, then per dependency: the dependency's hash and its dependents set.
-- ARGV[1] channel prefix of the queue's jobs, ARGV[2] queue name, ARGV[3] "1" at the front, ARGV[4] "1" if the caller chose ids,
-- ARGV[5] "1" if the jobs allow failure, ARGV[6] default failure ttl in seconds,
-- ARGV[7] k, then k option field/value pairs stored with every job, then f, and f pairs of function
-- path and source hash, then per job: id, ref, index of its function, data, signature ('': unsigned),
-- d, then d dependency refs (distinct). Refs (keys.py) are what dependents sets, ``deps`` and
-- ``dep:<ref>`` fields hold.
-- Returns the number of jobs written, or an error "NBQ_EXISTS <id>", "NBQ_NODEP <id> <dependency>"
-- (no such dependency: never enqueued, or expired) or "NBQ_CYCLE <id>" (it would wait for itself).
local ev, queue, at_front, check = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4] == '1'
local allow, failure_ttl = ARGV[5] == '1' and '1' or '0', tonumber(ARGV[6])
local k = tonumber(ARGV[7])
local options = {unpack(ARGV, 8, 7 + 2 * k)}
for i = 1, #options, 2 do
  if options[i] == 'failure_ttl' then failure_ttl = tonumber(options[i + 1]) or -1 end  -- 'none': keep
end
local f = tonumber(ARGV[8 + 2 * k])
local funcs = 9 + 2 * k
local jobs, a, c = {}, funcs + 2 * f, 4  -- ARGV and KEYS positions
while a <= #ARGV do
  local job = {id = ARGV[a], ref = ARGV[a + 1], fn = funcs + 2 * (tonumber(ARGV[a + 2]) - 1), data = ARGV[a + 3],
    sig = ARGV[a + 4], key = KEYS[c], deps = {}}
  local d = tonumber(ARGV[a + 5])
  for j = 1, d do
    job.deps[j] = {id = ARGV[a + 5 + j], key = KEYS[c + 2 * j - 1], set = KEYS[c + 2 * j]}  -- id: its ref
  end
  jobs[#jobs + 1] = job
  a, c = a + 6 + d, c + 1 + 2 * d
end
local seen = {}
for _, job in ipairs(jobs) do  -- check everything before writing anything
  if seen[job.ref] or (check and redis.call('EXISTS', job.key) == 1) then
    return redis.error_reply('NBQ_EXISTS ' .. job.id)
  end
  for _, dep in ipairs(job.deps) do
    if dep.id == job.ref then return redis.error_reply('NBQ_CYCLE ' .. job.id) end
    if not seen[dep.id] and not redis.call('HGET', dep.key, 'status') then
      return redis.error_reply('NBQ_NODEP ' .. job.id .. ' ' .. dep.id)
    end
  end
  seen[job.ref] = true
end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
local queued = {}
for _, job in ipairs(jobs) do
  local waits, failed, ids = {}, nil, {}
  for _, dep in ipairs(job.deps) do
    ids[#ids + 1] = dep.id
    local status = redis.call('HGET', dep.key, 'status')
    if status == 'failed' or status == 'canceled' then
      if allow ~= '1' then failed = failed or dep end
    elseif status ~= 'finished' then
      waits[#waits + 1] = dep
    end
  end
  local status = failed and 'failed' or (#waits > 0 and 'deferred' or 'queued')
  local fields = {'func', ARGV[job.fn], 'data', job.data, 'code', ARGV[job.fn + 1], 'queue', queue, 'status', status,
    'enqueued_at', now, 'deps', table.concat(ids, ' '), 'allow_failure', allow, unpack(options)}
  if job.sig ~= '' then fields[#fields + 1] = 'sig'; fields[#fields + 1] = job.sig end
  redis.call('HSET', job.key, unpack(fields))
  if failed then
    local line = 'DependencyFailed: dependency ' .. failed.id .. ' failed'
    redis.call('HSET', job.key, 'ended_at', now, 'exc', line, 'error', line .. '\n')
    redis.call('ZADD', KEYS[3], t[1], job.id)
    if failure_ttl >= 0 then redis.call('EXPIRE', job.key, math.max(1, math.floor(failure_ttl))) end
  elseif #waits > 0 then
    redis.call('HSET', job.key, 'pending', #waits, 'at_front', at_front and '1' or '0')
    for _, dep in ipairs(waits) do
      if redis.call('TYPE', dep.set).ok ~= 'zset' then redis.call('DEL', dep.set) end  -- junk under its name
      redis.call('HSET', job.key, 'dep:' .. dep.id, '1')
      redis.call('HSET', dep.key, 'dependents', '1')  -- its worker reads them before recording its end
      redis.call('ZADD', dep.set, redis.call('ZCARD', dep.set), job.ref)
    end
  else
    queued[#queued + 1] = job.id
  end
  -- ids and queue names are plain (letters, digits, '_', '-', '.'): no JSON escaping needed
  redis.call('PUBLISH', ev .. job.id,
    '{"id":"' .. job.id .. '","status":"' .. status .. '","queue":"' .. queue .. '","t":"' .. now .. '"}')
end
if #queued > 0 then
  if at_front then
    for j = #queued, 1, -1 do redis.call('LPUSH', KEYS[1], queued[j]) end
  else
    redis.call('RPUSH', KEYS[1], unpack(queued))
  end
  if redis.call('LLEN', KEYS[2]) == 0 then redis.call('RPUSH', KEYS[2], '1') end
end
return #jobs
