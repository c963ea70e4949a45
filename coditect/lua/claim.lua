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
local deadline, lease_ms, retry_ttl = tostring(now + lease), tostring(lease), tostring(RETRY_TTL_S)
local claimed = {}
local budgets = {}  -- batch id -> 1 when it has a budget, else 0 (read once per call)
local function budget_of(b)
  local known = budgets[b]
  if known == nil then
    local v = redis.call('HMGET', bkey(b), 'budget_usd', 'budget_tokens')
    known = (v[1] or v[2]) and 1 or 0
    budgets[b] = known
  end
  return known
end
local function mget(keys)
  if #keys <= 4000 then return redis.call('MGET', unpack(keys)) end
  local values = {}
  for first = 1, #keys, 4000 do
    for _, v in ipairs(redis.call('MGET', unpack(keys, first, math.min(first + 3999, #keys)))) do
      values[#values + 1] = v
    end
  end
  return values
end
-- Claims the jobs ids (due, held by nobody) whose queue scores are scores: per job its retry counter
-- and lease; the queue and lease index in a call each; then per batch its tasks' states in a call,
-- and per job (in order) its started event.
local function claim(ids, scores)
  local n = #ids
  if n == 0 then return end
  local keys = {}
  for i = 1, n do keys[i] = JOB .. ids[i] end
  local payloads = mget(keys)
  local leases, tasks, of_batch, groups, batches = {}, {}, {}, {}, {}
  for i = 1, n do
    local id = ids[i]
    local try = redis.pcall('INCR', RETRY .. id)
    local problem = ''
    if type(try) == 'table' then
      problem = 'retry counter ' .. RETRY .. id .. ' is unusable: ' .. tostring(try.err)
      try = 0
    else
      redis.call('EXPIRE', RETRY .. id, retry_ttl)
    end
    redis.call('SET', IN_PROGRESS .. id, ARGV[4], 'PX', lease_ms)
    leases[2 * i - 1] = deadline
    leases[2 * i] = id
    local aborted = ARGV[10] == '1' and unabort(id) or 0
    claimed[#claimed + 1] = {id, payloads[i] or '', try, scores[i], aborted, 0, problem, 0}
    local b, t = batch_of(id)
    if b then
      tasks[i], of_batch[i] = t, b
      local group = groups[b]
      if not group then
        group = {}
        groups[b] = group
        batches[#batches + 1] = b
      end
      group[#group + 1] = t
    end
  end
  bulk('ZADD', KEYS[1], leases)
  bulk('ZADD', KEYS[2], leases)
  for _, b in ipairs(batches) do
    local group, running = groups[b], {}
    local states = redis.call('HMGET', bkey(b, ':state'), unpack(group))
    for j, t in ipairs(group) do
      if states[j] ~= 'r' then
        running[#running + 1] = t
        running[#running + 1] = 'r'
      end
    end
    if #running > 0 then
      bulk('HSET', bkey(b, ':state'), running)
      incr(bkey(b), 'n_running', #running / 2)
    end
  end
  for i = 1, n do
    local t = tasks[i]
    if t then
      local id, row, b = ids[i], claimed[#claimed - n + i], of_batch[i]
      if not payloads[i] then  -- evicted or lost with Redis data: the batch still holds the task
        local task = redis.call('HGET', bkey(b, ':tasks'), t)
        if task then
          row[2] = envelope(task)
          redis.call('SET', JOB .. id, row[2], 'PX', C.expiry_ms)
        end
      end
      if has_part(b, ':parents') then
        local parent = redis.call('HGET', bkey(b, ':parents'), t)
        if parent then row[6] = tonumber(string.match(parent, '%S+%s+(%d+)')) or 0 end
      end
      row[8] = budget_of(b)
      emit(b, 'task.started', t, {'attempt', text(row[3]), 'worker', C.worker})
    end
  end
end
local function remembered()
  local seq = ARGV[11]
  if seq and seq ~= '' and #claimed > 0 then
    local last, items = LAST_CLAIM .. ARGV[4], {seq}
    for _, row in ipairs(claimed) do  -- at most MAX_CLAIM rows: well within unpack's limit
      items[#items + 1] = row[1]
      items[#items + 1] = text(row[3]) .. ' ' .. row[4] .. ' ' .. text(row[5]) .. ' ' .. text(row[6]) .. ' ' ..
        text(row[8]) .. ' ' .. row[7]
    end
    redis.call('DEL', last)
    redis.call('RPUSH', last, unpack(items))
    redis.call('PEXPIRE', last, lease_ms)
  end
  return claimed
end
if #ARGV > 11 then
  local ids, scores, taken = {}, {}, {}
  for i = 12, #ARGV do
    local id = ARGV[i]
    local score = redis.call('ZSCORE', KEYS[1], id)
    if #ids < want and not taken[id] and score and tonumber(score) <= now
        and redis.call('EXISTS', IN_PROGRESS .. id) == 0 then
      taken[id] = true  -- claimed below: held when named again
      ids[#ids + 1] = id
      scores[#scores + 1] = score
    end
  end
  claim(ids, scores)
  return remembered()
end
local ids, scores = {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, want)) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if not score or tonumber(score) > now then
    redis.call('ZREM', KEYS[2], id)  -- finished, cancelled or rescheduled since: not a lost lease
  elseif redis.call('EXISTS', IN_PROGRESS .. id) == 0 then
    ids[#ids + 1] = id
    scores[#scores + 1] = score
  end
end
claim(ids, scores)
local held = 0
for _ = 1, 10 do
  local page = want - #claimed
  if page <= 0 then break end
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', held, page)
  local count = #due / 2
  if count == 0 then break end
  local holders = {}
  for i = 1, count do holders[i] = IN_PROGRESS .. due[2 * i - 1] end
  holders = mget(holders)
  ids, scores = {}, {}
  for i = 1, count do
    if holders[i] then
      held = held + 1
    else
      ids[#ids + 1] = due[2 * i - 1]
      scores[#scores + 1] = due[2 * i]
    end
  end
  claim(ids, scores)
  if #claimed >= want or count < page then break end
end
return remembered()
