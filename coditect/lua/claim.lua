-- KEYS: queue, leases index. ARGV: now ms, lease ms, max jobs, worker token.
-- Claims up to max due jobs nobody holds. Returns {id, payload, try, score, aborted} per job.
-- Jobs whose lease ran out (their worker died) come first: their queue score is the lease deadline,
-- which would put them behind every job queued before it. Then the queue head, in score order.
-- Due jobs held by someone else (a plain ARQ worker keeps a running job's score) are stepped over,
-- reading at most ten pages of the queue head per call (a claimed job leaves the due range).
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local claimed = {}
local function claim(id, score)
  local payload = redis.call('GET', JOB .. id) or ''
  local try = redis.call('INCR', RETRY .. id)
  redis.call('EXPIRE', RETRY .. id, RETRY_TTL_S)
  redis.call('SET', IN_PROGRESS .. id, ARGV[4], 'PX', lease)
  redis.call('ZADD', KEYS[1], now + lease, id)
  redis.call('ZADD', KEYS[2], now + lease, id)
  local aborted = redis.call('ZREM', ABORT, id)
  claimed[#claimed + 1] = {id, payload, try, score, aborted}
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, want)) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if not score or tonumber(score) > now then
    redis.call('ZREM', KEYS[2], id)  -- finished, cancelled or rescheduled since: not a lost lease
  elseif redis.call('EXISTS', IN_PROGRESS .. id) == 0 then
    claim(id, score)
  end
end
local held = 0
for _ = 1, 10 do
  local page = want - #claimed
  if page <= 0 then break end
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', held, page)
  for _, id in ipairs(ids) do
    if redis.call('EXISTS', IN_PROGRESS .. id) == 0 then
      claim(id, redis.call('ZSCORE', KEYS[1], id))
    else
      held = held + 1
    end
  end
  if #claimed >= want or #ids < page then break end
end
return claimed
