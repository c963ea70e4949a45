-- KEYS: queue, leases index.
-- ARGV: now ms, lease ms, max jobs, worker token, worker name, wake channel, events maxlen,
--       finished-batch keep ms, job expiry ms, '1' when aborts are allowed (else the abort set is
--       left alone, as ARQ does), the claim's sequence number (or ''), then optionally the ids to
--       claim (instead of what is due first).
-- Claims up to max due jobs nobody holds. Returns {id, payload, try, score, aborted, depth, error,
-- budget} per job (budget 1: its batch has a budget to reserve against before it runs): error says
-- why when the job's retry counter is unusable (set by hand to a non-integer or to the largest
-- integer; try is 0 then): the worker records that job as failed without running it.
-- Jobs whose lease ran out (their worker died) come first: their queue score is the lease deadline,
-- which would put them behind every job queued before it. Then the queue head, in score order.
-- A call that claims something with a sequence number keeps it as the worker's last claim (see
-- reclaim.lua), for one lease: if the reply is lost, the worker asks for those jobs again.
-- Due jobs held by someone else (a plain ARQ worker keeps a running job's score) are stepped over,
-- reading at most ten pages of the queue head per call (a claimed job leaves the due range).
-- #include batch
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
configure(ARGV[1], KEYS[1], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[5])
local claimed = {}
local function claim(id, score)
  local payload = redis.call('GET', JOB .. id)
  local try = redis.pcall('INCR', RETRY .. id)
  local problem = ''
  if type(try) == 'table' then
    problem = 'retry counter ' .. RETRY .. id .. ' is unusable: ' .. tostring(try.err)
    try = 0
  else
    redis.call('EXPIRE', RETRY .. id, RETRY_TTL_S)
  end
  redis.call('SET', IN_PROGRESS .. id, ARGV[4], 'PX', lease)
  redis.call('ZADD', KEYS[1], now + lease, id)
  redis.call('ZADD', KEYS[2], now + lease, id)
  local aborted = ARGV[10] == '1' and redis.call('ZREM', ABORT, id) or 0
  local depth, budget = 0, 0
  local b, t = batch_of(id)
  if b then
    if not payload then  -- evicted or lost with Redis data: the batch still holds the task
      local task = redis.call('HGET', bkey(b, ':tasks'), t)
      if task then
        payload = envelope(task)
        redis.call('SET', JOB .. id, payload, 'PX', C.expiry_ms)
      end
    end
    local state = redis.call('HGET', bkey(b, ':state'), t)
    if state ~= 'r' then
      redis.call('HSET', bkey(b, ':state'), t, 'r')
      redis.call('HINCRBY', bkey(b), 'n_running', 1)
    end
    local parent = redis.call('HGET', bkey(b, ':parents'), t)
    if parent then depth = tonumber(string.match(parent, '%S+%s+(%d+)')) or 0 end
    if redis.call('HEXISTS', bkey(b), 'budget_usd') == 1 or redis.call('HEXISTS', bkey(b), 'budget_tokens') == 1 then
      budget = 1
    end
    emit(b, 'task.started', t, {'attempt', tostring(try), 'worker', C.worker})
  end
  claimed[#claimed + 1] = {id, payload or '', try, score, aborted, depth, problem, budget}
end
local function remembered()
  local seq = ARGV[11]
  if seq and seq ~= '' and #claimed > 0 then
    local last, items = LAST_CLAIM .. ARGV[4], {seq}
    for _, row in ipairs(claimed) do  -- at most MAX_CLAIM rows: well within unpack's limit
      items[#items + 1] = row[1]
      items[#items + 1] = row[3] .. ' ' .. row[4] .. ' ' .. row[5] .. ' ' .. row[6] .. ' ' .. row[8] .. ' ' .. row[7]
    end
    redis.call('DEL', last)
    redis.call('RPUSH', last, unpack(items))
    redis.call('PEXPIRE', last, lease)
  end
  return claimed
end
if #ARGV > 11 then
  for i = 12, #ARGV do
    local id = ARGV[i]
    local score = redis.call('ZSCORE', KEYS[1], id)
    if #claimed < want and score and tonumber(score) <= now and redis.call('EXISTS', IN_PROGRESS .. id) == 0 then
      claim(id, score)
    end
  end
  return remembered()
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
return remembered()
