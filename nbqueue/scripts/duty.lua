-- The duty lease (heartbeat.Duty): the one worker holding it runs the deployment's sweeps.
-- KEYS[1] the duty key. ARGV[1] key prefix, ARGV[2] the caller's token ("<worker> <16 hex>"),
-- ARGV[3] lease in ms (0: give it back), ARGV[4] the longest expiry a holder ever sets, in seconds.
-- Renews the lease if the caller holds it (or gives it back); takes it if it is free or holds junk:
-- a key of another type or a value that is no holder's token, and (Redis 7+: EXPIRE ... LT) any
-- expiry longer than ARGV[4] or none is cut to ARGV[4] first. Only commands a restricted user
-- has (README: ACL). Returns 1 if the caller holds the duty now, else 0.
local token, lease = ARGV[2], tonumber(ARGV[3])
redis.pcall('EXPIRE', KEYS[1], ARGV[4], 'LT')  -- an error on servers before 7.0: then no cap
local cur = redis.pcall('GET', KEYS[1])  -- pcall: a key of another type is junk
if cur and (type(cur) ~= 'string' or not string.find(cur, '^[%w_.%-]+ ' .. string.rep('%x', 16) .. '$')) then
  redis.call('DEL', KEYS[1])
  cur = false
end
if cur and cur ~= token then return 0 end
if lease > 0 then
  redis.call('SET', KEYS[1], token, 'PX', lease)
  return 1
end
if cur then redis.call('DEL', KEYS[1]) end
return 0
