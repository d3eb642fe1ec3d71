-- Append a running attempt's output and progress, unless another attempt holds the job by now
-- (its worker hung past the lease and the job ran again elsewhere): writes are fenced by attempt.
-- KEYS[1] job hash, KEYS[2] log list. ARGV[1] job id, ARGV[2] channel, ARGV[3] attempt,
-- ARGV[4] lines kept, ARGV[5] ttl of the lines (0: keep it), ARGV[6] progress JSON or '', ARGV[7..] lines.
-- Returns 1 if written, 0 if refused. Events carry Redis time, like the other events of a job.
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempt')
if cur[1] ~= 'started' or cur[2] ~= ARGV[3] then return 0 end
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', t[2])
if #ARGV > 6 then
  local lines = {unpack(ARGV, 7)}
  redis.call('RPUSH', KEYS[2], unpack(lines))
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
  redis.call('PUBLISH', ARGV[2], cjson.encode({id = ARGV[1], status = 'log', lines = lines, t = now}))
end
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[6])
  local event = cjson.decode(ARGV[6])
  event.id, event.status, event.t = ARGV[1], 'progress', now
  redis.call('PUBLISH', ARGV[2], cjson.encode(event))
end
return 1
