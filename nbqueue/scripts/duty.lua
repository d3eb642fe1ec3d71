-- The duty lease (heartbeat.Duty): the one worker holding it runs the deployment's sweeps.
-- KEYS[1] the duty key. ARGV[1] key prefix, ARGV[2] the caller's token, ARGV[3] lease in ms (0: give
-- it back), ARGV[4] the longest lease a holder ever sets, in ms.
-- Renews the lease if the caller holds it (or gives it back); takes it if it is free or holds junk
-- (a value of any type with no expiry or a longer one than any holder sets: written by hand).
-- Returns 1 if the caller holds the duty now, else 0.
local token, lease = ARGV[2], tonumber(ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 or ttl > tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[1])
  ttl = -2
end
if ttl == -2 then
  if lease > 0 then
    redis.call('SET', KEYS[1], token, 'PX', lease)
    return 1
  end
  return 0
end
if redis.pcall('GET', KEYS[1]) ~= token then return 0 end  -- pcall: a key of another type is not ours
if lease > 0 then
  redis.call('PEXPIRE', KEYS[1], lease)
  return 1
end
redis.call('DEL', KEYS[1])
return 0
