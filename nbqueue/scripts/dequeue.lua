-- Take the next job from the first non-empty queue and record who holds it, in one step.
-- A script names every key it touches up front, and a queue's next id is known only once read: the
-- caller passes the job keys of a window of each queue's first ids as it last saw them (returned by
-- the previous take). If a queue's head is not in its window (other workers took those, or jobs were
-- put in front), nothing is taken and 'retry' comes back with fresh windows: call again with them.
-- KEYS per queue q (n queues, in priority order): 4 keys at 4q-3 .. 4q: queue list, wake flag, active
-- leases (zset: job id -> lease deadline in ms), paused flag (``nbqueue suspend``); then KEYS[4n+1]
-- the worker's record of its last take here that took jobs; then the job hashes of every window id,
-- in the order of ARGV.
-- ARGV[1] unused, ARGV[2] the take's token (unique to the worker); '=' in front: the same take sent
-- again, as a lost connection cut off its reply: if it ran, the jobs it took that this worker still
-- holds come back again (their leases renewed; no new "started" event), else it takes as usual.
-- ARGV[3] worker name, ARGV[4] lease in ms, ARGV[5] window size to return, ARGV[6] n, ARGV[7] most
-- jobs to take, then per queue: name, channel prefix of its jobs, c, then c ids (its window).
-- More than one job is taken only from the first queue that has one, only ids of its window, and
-- never more than half of what that queue holds (rounded up): a worker that runs short jobs takes
-- a few at a time, each with its own lease, and leaves the rest to workers that wait.
-- Returns {kind, windows, job...}: kind 'job' (one or more jobs follow, 17 values each), 'none'
-- (the queues are empty), 'retry' or 'suspended' (nothing taken); windows: per queue its first ids
-- now; job: {queue, id, attempt,
-- func, data, code, timeout, result_ttl, failure_ttl, retries, retry_delay, lost_retries, sig,
-- on_success, on_failure, deps, dependents}: the call, the options the worker acts on, their
-- signature, its callbacks, the refs of the jobs whose results it takes (nil: none; flow.py) and
-- whether jobs wait for it.
-- Leaves each wake flag set exactly when its queue still holds jobs, so an idle worker
-- blocked on the flags wakes for the jobs this worker did not take.
local worker, lease, size, n = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local most = math.max(1, math.floor(tonumber(ARGV[7]) or 1))
local again = string.sub(ARGV[2], 1, 1) == '='
local token = again and string.sub(ARGV[2], 2) or ARGV[2]
local record = KEYS[4 * n + 1]
local queues, a, c = {}, 8, 4 * n + 2
for q = 1, n do
  local window, count = {}, tonumber(ARGV[a + 2])
  for i = 1, count do window[ARGV[a + 2 + i]] = KEYS[c + i - 1] end
  queues[q] = {name = ARGV[a], ev = ARGV[a + 1], list = KEYS[4 * q - 3], wake = KEYS[4 * q - 2],
    active = KEYS[4 * q - 1], window = window}
  a, c = a + 3 + count, c + count
end
for q = 1, n do
  if redis.call('EXISTS', KEYS[4 * q]) == 1 then return {'suspended', {}} end
end
local taken, kind = {}, nil
local t, now, now_ms
local FIELDS = {'func', 'data', 'code', 'timeout', 'result_ttl', 'failure_ttl', 'retries', 'retry_delay',
  'lost_retries', 'sig', 'on_success', 'on_failure', 'deps', 'dependents'}
local function handed(Q, id, attempt, f, from)  -- a job as the reply carries it; f[from ..]: FIELDS' values
  return {Q.name, id, attempt, unpack(f, from, from + 13)}  -- a missing field is false here, nil in the reply
end
if again then  -- the same take sent again: what it took, if it ran, that this worker still holds
  local held = redis.pcall('GET', record)  -- junk of another type there: as no record (a take as usual)
  local words = {}
  if type(held) == 'string' then for w in string.gmatch(held, '%S+') do words[#words + 1] = w end end
  if words[1] == token then
    local Q = queues[tonumber(words[2])]
    for i = 3, #words - 1, 2 do
      local id, attempt = words[i], words[i + 1]
      local key = Q and Q.window[id]
      if key then
        local f = redis.call('HMGET', key, 'status', 'worker', 'attempt', unpack(FIELDS))
        if f[1] == 'started' and f[2] == worker and f[3] == attempt then
          t = t or redis.call('TIME')
          redis.call('ZADD', Q.active, t[1] * 1000 + math.floor(t[2] / 1000) + lease, id)
          taken[#taken + 1] = handed(Q, id, tonumber(attempt), f, 4)
        end
      end
    end
  end
end
local took = nil  -- the queue the jobs were taken from now, and their ids and attempts
for q = 1, n do
  if #taken > 0 then break end
  local Q = queues[q]
  local limit = 1
  if most > 1 then limit = math.min(most, math.ceil(redis.call('LLEN', Q.list) / 2)) end
  while #taken < limit do
    local id = redis.call('LPOP', Q.list)
    if not id then break end
    local key = Q.window[id]
    if not key then  -- not a job key we named: put it back
      redis.call('LPUSH', Q.list, id)
      if #taken == 0 then kind = 'retry' end
      break
    end
    local f = redis.call('HMGET', key, 'status', 'workers', 'attempt', unpack(FIELDS))
    if f[1] == 'queued' then
      if not now then
        t = redis.call('TIME')
        now, now_ms = t[1] .. '.' .. string.format('%06d', t[2]), t[1] * 1000 + math.floor(t[2] / 1000)
      end
      local attempt = math.floor(tonumber(f[3]) or 0) + 1  -- no error (and no lost pop) on a field broken by hand
      redis.call('HSET', key, 'status', 'started', 'worker', worker, 'started_at', now, 'attempt', attempt,
        'workers', f[2] and (f[2] .. ' ' .. worker) or worker)
      redis.call('ZADD', Q.active, now_ms + lease, id)
      redis.call('PUBLISH', Q.ev .. id, '{"id":"' .. id .. '","status":"started","worker":"'
        .. worker .. '","attempt":' .. attempt .. ',"t":"' .. now .. '"}')  -- plain names: no escaping
      taken[#taken + 1] = handed(Q, id, attempt, f, 4)
      took = took or {token, q}
      took[#took + 1], took[#took + 2] = id, attempt
    end
    -- an id whose job is gone (deleted, expired) or no longer queued is dropped
  end
  if #taken > 0 or kind then break end
end
if took and token ~= '' then redis.call('SET', record, table.concat(took, ' '), 'PX', lease) end
local windows = {}  -- each queue's first ids now; a queue holds jobs iff its window is not empty
for q = 1, n do
  windows[q] = redis.call('LRANGE', queues[q].list, 0, math.max(size, 1) - 1)
  if #windows[q] > 0 then
    if redis.call('LLEN', queues[q].wake) == 0 then redis.call('RPUSH', queues[q].wake, '1') end
  else
    redis.call('DEL', queues[q].wake)
  end
end
local reply = {#taken > 0 and 'job' or kind or 'none', windows}
for j, job in ipairs(taken) do
  for i = 1, 17 do reply[2 + 17 * (j - 1) + i] = job[i] end
end
return reply
