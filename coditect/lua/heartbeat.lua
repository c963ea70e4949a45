-- KEYS: queue, leases index. ARGV: now ms, lease ms, worker token, then job ids.
-- Renews the lease of the jobs this worker still holds; returns how many it renewed.
local deadline = tonumber(ARGV[1]) + tonumber(ARGV[2])
local renewed = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('GET', IN_PROGRESS .. id) == ARGV[3] then
    redis.call('PEXPIRE', IN_PROGRESS .. id, ARGV[2])
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    redis.call('ZADD', KEYS[2], 'XX', deadline, id)
    renewed = renewed + 1
  end
end
return renewed
