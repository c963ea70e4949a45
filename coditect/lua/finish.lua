-- KEYS: queue, leases index.
-- ARGV: worker token, wake channel, now ms, events maxlen, finished-batch keep ms, job expiry ms,
--       worker name, then records of six fields:
--   kind, job id, payload, result ttl ms, keep-in-progress ms, batch info JSON or ''
-- kind 'done': the job's final result (payload; ttl '0': keep none, '-1': forever). The first final
--   result wins (a job that ran twice keeps one). A batch task's info (status, attempt, duration,
--   usage, cost, error, agent, model) updates its batch: counters, totals, the final event, its
--   dependants released or cancelled, the batch finished; a delegated child wakes its parent.
-- kind 'again': a job this worker still holds goes back in the queue at the score in payload
--   ('defer': the same, and the start does not count as a try). info may name the event to emit.
-- keep-in-progress ms > 0 keeps the in-progress key that long (ARQ does it for cron jobs).
-- #include batch
configure(ARGV[3], KEYS[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
C.counts, C.count_order = {}, {}
C.leases, C.unqueue, C.unqueued = KEYS[2], {}, {}  -- see flush_unqueue
local requeued = 0
local ended, seen = {}, {}  -- batches a task of which ended here: checked once, at the end
for i = 8, #ARGV, 6 do
  local kind, id, payload, ttl, keep, info = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local in_progress = IN_PROGRESS .. id
  if kind == 'done' then
    if ttl == '-1' then
      redis.call('SET', RESULT .. id, payload, 'NX')
    elseif ttl ~= '0' then
      redis.call('SET', RESULT .. id, payload, 'PX', ttl, 'NX')
    end
    if keep ~= '0' then
      redis.call('DEL', JOB .. id, RETRY .. id)
      redis.call('PEXPIRE', in_progress, keep)
    else
      redis.call('DEL', JOB .. id, RETRY .. id, in_progress)
    end
    C.unqueue[#C.unqueue + 1] = id
    C.unqueued[id] = true
    unabort(id)
    local b, t = batch_of(id)
    if b and info ~= '' then
      local data = cjson.decode(info)
      if data.usage then
        data.usage = {in_ = data.usage[1], out = data.usage[2], cr = data.usage[3], cw = data.usage[4]}
      end
      if data.cost == cjson.null then data.cost = nil end
      data.worker = data.worker or C.worker
      if finalize(b, t, data.code, data) then
        local parent = has_part(b, ':parents') and redis.call('HGET', bkey(b, ':parents'), t)
        if parent then
          local holder = redis.call('GET', IN_PROGRESS .. JOB_ID_PREFIX .. b .. ':' .. string.match(parent, '%S+'))
          if holder then redis.call('PUBLISH', WORKER_CHANNEL .. holder, id) end
        end
        if not seen[b] then
          seen[b] = true
          ended[#ended + 1] = b
        end
      end
    end
  elseif redis.call('GET', in_progress) == ARGV[1] then
    if C.unqueued[id] then flush_unqueue() end
    redis.call('ZADD', KEYS[1], payload, id)
    if keep ~= '0' then redis.call('PEXPIRE', in_progress, keep) else redis.call('DEL', in_progress) end
    redis.call('ZREM', KEYS[2], id)
    if kind == 'defer' then redis.call('DECR', RETRY .. id) end
    requeued = requeued + 1
    local b, t = batch_of(id)
    if b then
      release(b, t)  -- the next attempt reserves again
      local state = redis.call('HGET', bkey(b, ':state'), t)
      if state == 'r' then
        redis.call('HSET', bkey(b, ':state'), t, 'q')
        incr(bkey(b), 'n_running', -1)
      end
      if info ~= '' then
        local data = cjson.decode(info)
        local fields = {'attempt', text(data.attempt or 0), 'worker', C.worker}
        if data.error then fields[#fields + 1] = 'error'; fields[#fields + 1] = data.error end
        if data.delay then fields[#fields + 1] = 'delay'; fields[#fields + 1] = tostring(data.delay) end
        emit(b, data.event, t, fields)
      end
    end
  end
end
flush_unqueue()
flush_counts()
for _, b in ipairs(ended) do finish_batch_if_done(b) end
if requeued > 0 then redis.call('PUBLISH', ARGV[2], requeued) end
return requeued
