-- Set the wake flags of a worker's queues on one slot anew, as a take leaves them: present exactly
-- while the queue holds jobs (a waker popped one, and no take of these queues followed; takes.py).
-- KEYS[1 .. n] queue lists, KEYS[n+1 .. 2n] their wake flags.
local n = #KEYS / 2
for q = 1, n do
  if redis.call('LLEN', KEYS[q]) > 0 then
    if redis.call('LLEN', KEYS[n + q]) == 0 then redis.call('RPUSH', KEYS[n + q], '1') end
  else
    redis.call('DEL', KEYS[n + q])
  end
end
return n
