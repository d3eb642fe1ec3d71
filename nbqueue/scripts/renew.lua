-- Renew the leases of the attempts this worker holds on one queue, and say which it no longer holds.
-- KEYS[1] the queue's active leases, then the hashes of the jobs in ARGV.
-- ARGV[1] unused, ARGV[2] worker, ARGV[3] lease in ms, then pairs of job id and attempt.
-- Returns {lost ids..., "|", ids asked to cancel...}: lost = taken over or gone (stop them
-- without writing), cancel = a cancel was requested for them.
local worker, lease = ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + lease
local lost, cancel = {}, {}
for i = 4, #ARGV, 2 do
  local id, attempt = ARGV[i], ARGV[i + 1]
  -- pcall: a job key overwritten by hand (not a hash) counts as lost, and the others are still renewed
  local cur = redis.pcall('HMGET', KEYS[(i - 4) / 2 + 2], 'worker', 'attempt', 'status', 'cancel')
  if cur.err == nil and cur[1] == worker and cur[2] == attempt and cur[3] == 'started' then
    redis.call('ZADD', KEYS[1], deadline, id)
    if cur[4] then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
lost[#lost + 1] = '|'
for _, id in ipairs(cancel) do lost[#lost + 1] = id end
return lost
