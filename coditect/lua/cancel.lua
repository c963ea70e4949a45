-- KEYS: queue. ARGV: now ms, result ttl ms, then (job id, cancelled-result payload, done-list key
-- or '') triples. A queued job is removed before any worker starts it, and its batch's waiter told;
-- a running one is asked to abort.
local dequeued, aborted = 0, 0
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('EXISTS', IN_PROGRESS .. id) == 1 then
    redis.call('ZADD', ABORT, ARGV[1], id)
    aborted = aborted + 1
  elseif redis.call('EXISTS', RESULT .. id) == 0 and redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('DEL', JOB .. id, RETRY .. id)
    redis.call('SET', RESULT .. id, ARGV[i + 1], 'PX', ARGV[2])
    if ARGV[i + 2] ~= '' then
      redis.call('RPUSH', ARGV[i + 2], id)
      redis.call('PEXPIRE', ARGV[i + 2], ARGV[2])
    end
    dequeued = dequeued + 1
  end
end
return {dequeued, aborted}
