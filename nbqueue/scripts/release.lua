-- Release or fail the dependents of a job that ended outside finish.lua and cancel.lua (a lost
-- worker's job that recover.lua failed or canceled); passes over those already dealt with.
-- KEYS[1] the job's hash, KEYS[2] its dependents set, then 5 keys per dependent node (deps.lua).
-- ARGV[1] unused, ARGV[2] job id, ARGV[3] default failure ttl in seconds, ARGV[4] the job's ref,
-- ARGV[5] n dependent nodes, then 6 values per node. Returns 1 if done, 0 if the job has not ended
-- (or is gone), 3 if the dependents passed are not those in Redis (nothing written: read them and
-- call again).
-- #include deps
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'finished' and status ~= 'failed' and status ~= 'canceled' then return 0 end
local nodes = deps_nodes(2, 5)
if not deps_check(2, nodes, status ~= 'finished') then return 3 end
deps_apply(ARGV[2], ARGV[4], status, 2, nodes, redis.call('TIME'), tonumber(ARGV[3]))
return 1
