-- Shared by finish.lua and cancel.lua (included): release or fail the dependents of a job that ends.
-- The caller read them just before (flow.dependents_of) and passes them as nodes, in the order each
-- dependents set holds them (the order they were enqueued), breadth first:
-- ARGV[a] = n, then per node 6 values: ref (as dependents sets hold it), parent (0: the ending job,
-- else the parent node's index), expanded ('1': the node's own dependents were read and follow as
-- nodes), queue name, id (as its queue holds it), its event channel;
-- KEYS[k] = the ending job's dependents set, then per node 5 keys: job hash, queue list, wake flag,
-- failed registry, dependents set. deps_check tells whether the nodes are still what Redis holds;
-- if not, the script writes nothing and returns 3, and the caller reads them again.
local function deps_nodes(k, a)
  local nodes = {}
  for i = 1, tonumber(ARGV[a]) or 0 do
    local b, c = a + 6 * (i - 1), k + 5 * (i - 1)
    nodes[i] = {ref = ARGV[b + 1], parent = tonumber(ARGV[b + 2]), expanded = ARGV[b + 3] == '1', queue = ARGV[b + 4],
      id = ARGV[b + 5], channel = ARGV[b + 6],
      job = KEYS[c + 1], list = KEYS[c + 2], wake = KEYS[c + 3], failed = KEYS[c + 4], deps = KEYS[c + 5]}
  end
  return nodes
end

local deps_found = false  -- the ending job's dependents set exists (the common case: it does not)

local function deps_count(key)  -- members of a dependents set (anything else under its name: junk, none)
  if redis.call('EXISTS', key) == 0 then return 0 end
  deps_found = true
  if redis.call('TYPE', key).ok ~= 'zset' then return 0 end
  return redis.call('ZCARD', key)
end

-- True if every dependents set involved holds exactly the nodes passed (none was added since they were
-- read: sets only grow while their job has not ended), and every dependent that is to fail had its own
-- dependents read (they fail too). ``failing``: the ending job failed or was canceled.
local function deps_check(k, nodes, failing)
  local children = {}
  for _, node in ipairs(nodes) do children[node.parent] = (children[node.parent] or 0) + 1 end
  if deps_count(KEYS[k]) ~= (children[0] or 0) then return false end
  if not deps_found then return true end  -- no dependents: the one call a job without any pays
  local fails, decided = {[0] = failing}, {}
  for i, node in ipairs(nodes) do
    local parent = nodes[node.parent]
    if not redis.call('ZSCORE', parent and parent.deps or KEYS[k], node.ref) then return false end
    if node.expanded and deps_count(node.deps) ~= (children[i] or 0) then return false end
    if fails[node.parent] and not decided[node.ref] then
      decided[node.ref] = true
      local cur = redis.call('HMGET', node.job, 'status', 'allow_failure', 'queue')
      if cur[1] == 'deferred' and cur[2] ~= '1' and cur[3] == node.queue then
        if not node.expanded then return false end
        fails[i] = true
      end
    end
  end
  return true
end

-- After deps_check: a deferred dependent of a finished job (or of any ended job, if it allows failure)
-- has that dependency ticked off, and moves to the back (or, enqueued at_front, the front) of its queue
-- when none is left; one of a failed or canceled job fails with "dependency <id> failed", and so on down
-- the chain. An id that is no deferred job of that queue (gone, junk, released already) is passed over.
-- The dependents sets of the ending job and of the failed dependents are dropped.
-- ``id`` / ``ref``: the ending job's id and ref.
local function deps_apply(id, ref, status, k, nodes, t, failure_ttl)
  local now = t[1] .. '.' .. string.format('%06d', t[2])
  local fails = {[0] = status ~= 'finished'}
  for i, node in ipairs(nodes) do
    local parent = nodes[node.parent]
    if node.parent == 0 or fails[node.parent] then
      local from, from_ref = parent and parent.id or id, parent and parent.ref or ref
      local cur = redis.call('HMGET', node.job, 'status', 'allow_failure', 'queue', 'failure_ttl', 'at_front')
      if cur[1] == 'deferred' and cur[3] == node.queue then
        if fails[node.parent] and cur[2] ~= '1' then
          local line = 'DependencyFailed: dependency ' .. from .. ' failed'
          if node.parent == 0 and status == 'canceled' then line = line .. ' (it was canceled)' end
          redis.call('HSET', node.job, 'status', 'failed', 'ended_at', now, 'exc', line, 'error', line .. '\n')
          redis.call('ZADD', node.failed, t[1], node.id)
          if cur[4] ~= 'none' then
            redis.call('EXPIRE', node.job, math.max(1, math.floor(tonumber(cur[4]) or failure_ttl)))
          end
          redis.call('PUBLISH', node.channel, cjson.encode({id = node.id, status = 'failed', t = now}))
          fails[i] = true
        elseif redis.call('HDEL', node.job, 'dep:' .. from_ref) == 1
            and redis.call('HINCRBY', node.job, 'pending', -1) <= 0 then
          redis.call('HSET', node.job, 'status', 'queued')
          if cur[5] == '1' then redis.call('LPUSH', node.list, node.id) else redis.call('RPUSH', node.list, node.id) end
          if redis.call('LLEN', node.wake) == 0 then redis.call('RPUSH', node.wake, '1') end
          redis.call('PUBLISH', node.channel,
            cjson.encode({id = node.id, status = 'queued', queue = node.queue, t = now}))
        end
      end
    end
  end
  if not deps_found then return end
  redis.call('DEL', KEYS[k])
  for i, node in ipairs(nodes) do
    if fails[i] then redis.call('DEL', node.deps) end
  end
end
