-- KEYS: queue. ARGV: score, job expiry ms, wake channel, then (job id, payload) pairs.
-- Adds the jobs that are neither queued nor finished; wakes idle workers; returns how many it added.
local added = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('EXISTS', JOB .. id, RESULT .. id) == 0 then
    redis.call('PSETEX', JOB .. id, ARGV[2], ARGV[i + 1])
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    added = added + 1
  end
end
if added > 0 then redis.call('PUBLISH', ARGV[3], added) end
return added
