-- KEYS: queue.
-- ARGV: now ms, wake channel, events maxlen, finished-batch keep ms, job expiry ms, worker name,
--       batch id, parent task id, children's depth, then (child id, child JSON) pairs.
-- Adds the children to the parent's batch and enqueues them. A child that exists already (the
-- parent ran before and delegated it then) is left as it is, so a re-run parent finds its
-- children instead of starting them again. Returns 1 (added) or 0 (existed) per child.
-- #include batch
configure(ARGV[1], KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local b, parent, depth = ARGV[7], ARGV[8], ARGV[9]
local meta, tasks = bkey(b), bkey(b, ':tasks')
if redis.call('EXISTS', meta) == 0 then
  return redis.error_reply('batch ' .. b .. ' is not recorded (it expired, or Redis lost it)')
end
local cancelled = redis.call('HGET', meta, 'cancelled')
local added = {}
for i = 10, #ARGV, 2 do
  local child, task = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', tasks, child) == 1 then
    added[#added + 1] = 0
  else
    redis.call('HSET', tasks, child, task)
    redis.call('RPUSH', bkey(b, ':order'), child)
    redis.call('HSET', bkey(b, ':parents'), child, parent .. ' ' .. depth)
    mark_part(b, ':parents')
    redis.call('HINCRBY', meta, 'total', 1)
    if cancelled then
      redis.call('HSET', bkey(b, ':state'), child, 'p')
      cancel_tree(b, child, 'c', cancelled, true)
    else
      enqueue(b, child, task)
    end
    added[#added + 1] = 1
  end
end
set_ttl(b, RUNNING_TTL_MS)
return added
