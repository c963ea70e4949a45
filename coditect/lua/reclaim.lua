-- KEYS: queue, leases index.
-- ARGV: now ms, lease ms, worker token, the sequence number of a claim whose reply never came.
-- The jobs of that claim (kept by claim.lua as the worker's last claim) that this worker still holds,
-- with their leases renewed, as claim.lua returns them: {id, payload, try, score, aborted, depth,
-- error, budget} per job. Nothing when the last claim has another number: that claim never ran, claimed
-- nothing, or its lease (and the record with it) is gone.
local now, lease, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local stored = redis.call('LRANGE', LAST_CLAIM .. token, 0, -1)
if stored[1] ~= ARGV[4] then return {} end
local rows = {}
for i = 2, #stored, 2 do
  local id = stored[i]
  if redis.call('GET', IN_PROGRESS .. id) == token then
    local try, score, aborted, depth, budget, problem =
      string.match(stored[i + 1], '^(%S+) (%S+) (%S+) (%S+) (%S+) ?(.*)$')
    redis.call('SET', IN_PROGRESS .. id, token, 'PX', lease)
    redis.call('ZADD', KEYS[1], 'XX', now + lease, id)
    redis.call('ZADD', KEYS[2], 'XX', now + lease, id)
    rows[#rows + 1] = {id, redis.call('GET', JOB .. id) or '', tonumber(try), score, tonumber(aborted),
      tonumber(depth), problem, tonumber(budget)}
  end
end
return rows
