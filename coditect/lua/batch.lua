-- The batch library: included by every script that changes a batch, so that each state change,
-- its counters, its event and what follows from it (dependants released or cancelled, the batch
-- finished) happen in the one atomic call that makes the change.
--
-- A batch <b> is the hash BATCH..b (name, created, total, counters, flags and totals) and:
--   :tasks       task id -> task JSON            :state       task id -> q | r | s | f | t | c
--   :waiting     task id -> unmet dependencies   :dependants  task id -> "id id ..."
--   :parents     child id -> "parent-id depth"          :order       task ids, in submission order
--   :reserved    task id -> "usd tokens" it reserved against the batch's budget while it runs
-- and its event stream EVENTS..b; every event also goes to the global stream EVENTS_ALL; once the
-- batch has finished, EVENTS..b..END_SUFFIX holds its batch.finished event alone.
-- C is the call's configuration: now (ms), queue, wake (channel), maxlen (of the streams),
-- keep_ms (of a finished batch), expiry_ms (of a job key), worker (name for events).
-- A call reads some things once and keeps them in C (see batch_of, has_part, unabort): each cache
-- notes what the call itself writes, and no other client writes while a script runs.

local C = {}
local FINAL = {s = 'success', f = 'failed', t = 'timeout', c = 'cancelled'}
local CODE = {success = 's', failed = 'f', timeout = 't', cancelled = 'c'}
local EVENT = {s = 'task.succeeded', f = 'task.failed', t = 'task.timeout', c = 'task.cancelled'}
local COUNTER = {s = 'n_success', f = 'n_failed', t = 'n_timeout', c = 'n_cancelled'}
local LABELS = {'agent', 'model', 'worker', 'error'}
local PARTS = {'', ':tasks', ':order', ':state', ':waiting', ':dependants', ':parents', ':reserved'}

-- A number's conversion to text costs about as much as a redis.call: now, keep_ms and expiry_ms are
-- converted once (they are only ever written, as Redis would have converted them), other numbers
-- through text().
local function configure(now, queue, wake, maxlen, keep_ms, expiry_ms, worker)
  C.now, C.queue, C.wake = tostring(tonumber(now)), queue, wake
  C.maxlen, C.worker = maxlen, worker
  C.keep_ms, C.expiry_ms = tostring(tonumber(keep_ms)), tostring(tonumber(expiry_ms))
  C.woken = false
  C.batches, C.parts, C.abort = {}, {}, nil
end

-- tostring(n), remembered for the call (attempts and token counts repeat).
local TEXT = {}
local function text(n)
  if n == 0 then return 1 / n < 0 and '-0' or '0' end  -- 0 and -0 are one key
  local s = TEXT[n]
  if s then return s end
  s = tostring(n)
  if type(n) == 'number' and n == n then TEXT[n] = s end  -- (NaN is no key)
  return s
end

-- A batch's key names, built once per call and batch ([1]: its event stream).
local NAMES = {}
local function names_of(b)
  local names = NAMES[b]
  if not names then
    names = {EVENTS .. b}
    NAMES[b] = names
  end
  return names
end

local function bkey(b, part)
  local names = names_of(b)
  part = part or ''
  local key = names[part]
  if not key then
    key = BATCH .. b .. part
    names[part] = key
  end
  return key
end

-- t[key], a table made there the first time.
local function table_in(t, key)
  local found = t[key]
  if not found then
    found = {}
    t[key] = found
  end
  return found
end

-- A batch hash's counters. A script that ends many tasks in one call (finish.lua) sets C.counts = {}:
-- its integer increments are summed there and written by flush_counts, one HINCRBY per counter
-- instead of one per task and counter (in the order the counters were first met, as before, so a
-- hash lists its fields as it did; float increments are replayed one by one, as Redis added them).
-- Anything that reads counters flushes first.
local function incr(meta, name, by, float)
  local counts = C.counts
  if not counts then
    redis.call(float and 'HINCRBYFLOAT' or 'HINCRBY', meta, name, by)
    return
  end
  local of_meta = table_in(counts, meta)
  local entry = of_meta[name]
  if not entry then
    entry = {meta = meta, name = name, by = 0, floats = float and {} or nil}
    of_meta[name] = entry
    C.count_order[#C.count_order + 1] = entry
  end
  if float then entry.floats[#entry.floats + 1] = by else entry.by = entry.by + by end
end

local function flush_counts()
  if not C.counts then return end
  for _, entry in ipairs(C.count_order) do
    if entry.floats then
      for _, by in ipairs(entry.floats) do redis.call('HINCRBYFLOAT', entry.meta, entry.name, by) end
    elseif entry.by ~= 0 then
      redis.call('HINCRBY', entry.meta, entry.name, entry.by)
    end
  end
  C.counts, C.count_order = {}, {}
end

-- (batch id, task id) of a coditect job id whose batch is recorded, else nil. Whether a batch is
-- recorded is read once per call (set_ttl forgets it: a zero keep deletes the batch).
local function batch_of(id)
  local b, t = string.match(id, JOB_ID_PATTERN)
  if not b then return nil end
  local known = C.batches[b]
  if known == nil then
    known = redis.call('EXISTS', BATCH .. b) == 1
    C.batches[b] = known
  end
  if known then return b, t end
  return nil
end

-- Whether batch b's part (':parents', ':dependants', ':reserved') exists, read once per call: a
-- batch without delegation, dependencies or a budget skips the per-task reads of that part. Only
-- submit.lua writes :dependants, delegate.lua :parents (both call mark_part), budget.lua :reserved;
-- a part that empties within the call reads as an absent field, as it did.
local function has_part(b, part)
  local key = bkey(b, part)
  local known = C.parts[key]
  if known == nil then
    known = redis.call('EXISTS', key) == 1
    C.parts[key] = known
  end
  return known
end

local function mark_part(b, part) C.parts[bkey(b, part)] = true end

-- ZREM of the job from the abort set (1 when it was there), skipped while the set does not exist.
local function unabort(id)
  if C.abort == nil then C.abort = redis.call('EXISTS', ABORT) == 1 end
  if not C.abort then return 0 end
  return redis.call('ZREM', ABORT, id)
end

-- Runs `cmd key items...` in as few calls as unpack allows (it stops near 8,000 values); a chunk of
-- 4,000 keeps pairs together.
local function bulk(cmd, key, items)
  for first = 1, #items, 4000 do
    redis.call(cmd, key, unpack(items, first, math.min(first + 3999, #items)))
  end
end

-- The jobs a finish call has done leave the queue and the lease index in one call each, after its
-- loop (C.unqueue, set by finish.lua), or before the call puts one of them back in the queue.
local function flush_unqueue()
  local ids = C.unqueue
  if not ids or #ids == 0 then return end
  for first = 1, #ids, 4000 do
    local last = math.min(first + 3999, #ids)
    redis.call('ZREM', C.queue, unpack(ids, first, last))
    redis.call('ZREM', C.leases, unpack(ids, first, last))
  end
  C.unqueue, C.unqueued = {}, {}
end

local function emit(b, kind, t, fields)
  local args = {names_of(b)[1], 'MAXLEN', '~', C.maxlen, '*', 'type', kind, 'batch', b}
  local n = 9
  if t then args[10] = 'task'; args[11] = t; n = 11 end
  for i = 1, #fields do args[n + i] = fields[i] end
  C.last_event = redis.call('XADD', unpack(args))
  args[1] = EVENTS_ALL
  redis.call('XADD', unpack(args))
end

local function wake()
  if not C.woken then
    C.woken = true
    redis.call('PUBLISH', C.wake, 1)
  end
end

-- Publishes the wake-up before the call writes anything. A script's writes before an error stay
-- written, so a Redis user whose ACL refuses PUBLISH must be stopped before the first write.
local function wake_first()
  local reply = redis.pcall('PUBLISH', C.wake, 1)
  if type(reply) == 'table' and reply.err then
    error({err = "NOPERM this user has no permissions to run the 'publish' command (nothing was written)"})
  end
  C.woken = true
end

-- ARQ's job record for a task (function, args, kwargs, enqueue time), built around its JSON.
local function envelope(task)
  return '{"t":null,"f":"' .. JOB_NAME .. '","a":[' .. task .. '],"k":{},"et":' .. C.now .. '}'
end

local function enqueue(b, t, task)
  local id = JOB_ID_PREFIX .. b .. ':' .. t
  if C.unqueued and C.unqueued[id] then flush_unqueue() end
  redis.call('SET', JOB .. id, envelope(task), 'PX', C.expiry_ms)
  redis.call('ZADD', C.queue, C.now, id)
  redis.call('HSET', bkey(b, ':state'), t, 'q')
  emit(b, 'task.queued', t, {'attempt', '0'})
  wake()
end

local function set_ttl(b, ms)
  for _, part in ipairs(PARTS) do redis.call('PEXPIRE', bkey(b, part), ms) end
  redis.call('PEXPIRE', EVENTS .. b, ms)
  C.batches[b] = nil
end

local function finish_batch_if_done(b)
  flush_counts()
  local meta = bkey(b)
  local n = redis.call('HMGET', meta, 'total', 'n_success', 'n_failed', 'n_timeout', 'n_cancelled', 'finished')
  local done = (tonumber(n[2]) or 0) + (tonumber(n[3]) or 0) + (tonumber(n[4]) or 0) + (tonumber(n[5]) or 0)
  if n[6] or done < tonumber(n[1]) then return end
  redis.call('HSET', meta, 'finished', C.now)
  local totals = redis.call('HMGET', meta, 'in', 'out', 'cache_read', 'cache_write', 'cost')
  emit(b, 'batch.finished', nil, {
    'total', n[1], 'success', n[2] or '0', 'failed', n[3] or '0', 'timeout', n[4] or '0',
    'cancelled', n[5] or '0', 'in', totals[1] or '0', 'out', totals[2] or '0',
    'cache_read', totals[3] or '0', 'cache_write', totals[4] or '0', 'cost', totals[5] or '0'})
  -- The end alone, for a caller that waits for nothing else (a small batch's run_batch).
  local ended = EVENTS .. b .. END_SUFFIX
  redis.call('XADD', ended, 'MAXLEN', '1', '*', 'type', 'batch.finished', 'batch', b, 'total', n[1],
    'success', n[2] or '0', 'failed', n[3] or '0', 'timeout', n[4] or '0', 'cancelled', n[5] or '0')
  redis.call('PEXPIRE', ended, C.keep_ms)
  set_ttl(b, C.keep_ms)
end

-- The counter names of the totals under prefix kind .. name .. ':' (kind '' for the batch's own).
local TOTALS = {}
local function totals_of(kind, name)
  local of_kind = table_in(TOTALS, kind)
  local names = of_kind[name]
  if not names then
    local prefix = kind == '' and '' or (kind .. name .. ':')
    names = {prefix .. 'in', prefix .. 'out', prefix .. 'cache_read', prefix .. 'cache_write', prefix .. 'cost',
      prefix .. 'unpriced'}
    of_kind[name] = names
  end
  return names
end

local function add_totals(meta, names, u, cost)
  if u.in_ ~= 0 then incr(meta, names[1], u.in_) end
  if u.out ~= 0 then incr(meta, names[2], u.out) end
  if u.cr ~= 0 then incr(meta, names[3], u.cr) end
  if u.cw ~= 0 then incr(meta, names[4], u.cw) end
  if cost then
    if cost ~= 0 then incr(meta, names[5], cost, true) end
  elseif u.in_ + u.out + u.cr + u.cw > 0 then  -- tokens of a model without a price (not a task that never ran)
    incr(meta, names[6], 1)
  end
end

-- Gives back what task t reserved against its batch's budget (when it ends or goes back to the queue).
local function release(b, t)
  if not has_part(b, ':reserved') then return end
  local held = redis.call('HGET', bkey(b, ':reserved'), t)
  if not held then return end
  local usd, tokens = string.match(held, '(%S+) (%S+)')
  redis.call('HDEL', bkey(b, ':reserved'), t)
  redis.call('HINCRBYFLOAT', bkey(b), 'reserved_usd', -tonumber(usd))
  redis.call('HINCRBY', bkey(b), 'reserved_tokens', -tonumber(tokens))
end

local cancel_tree

-- Records task t's final status (code s/f/t/c) once; releases or cancels its dependants.
-- info: attempt, duration, usage {in_, out, cr, cw}, cost (nil: unknown), error, agent, model.
-- Returns false when t was already final (a second final result of a task that ran twice).
local function finalize(b, t, code, info)
  local state = bkey(b, ':state')
  local previous = redis.call('HGET', state, t)
  if previous and FINAL[previous] then return false end
  local meta = bkey(b)
  release(b, t)
  redis.call('HSET', state, t, code)
  incr(meta, COUNTER[code], 1)
  if previous == 'r' then incr(meta, 'n_running', -1) end
  local fields = {'attempt', text(info.attempt or 0), 'duration', text(info.duration or 0)}
  if info.usage then
    local u = info.usage
    add_totals(meta, totals_of('', ''), u, info.cost)
    if info.agent and info.agent ~= '' then add_totals(meta, totals_of('agent:', info.agent), u, info.cost) end
    if info.model and info.model ~= '' then add_totals(meta, totals_of('model:', info.model), u, info.cost) end
    local n = #fields
    fields[n + 1] = 'in'; fields[n + 2] = text(u.in_); fields[n + 3] = 'out'; fields[n + 4] = text(u.out)
    fields[n + 5] = 'cache_read'; fields[n + 6] = text(u.cr); fields[n + 7] = 'cache_write'
    fields[n + 8] = text(u.cw)
    fields[n + 9] = 'cost'; fields[n + 10] = info.cost and text(info.cost) or ''
  end
  for _, name in ipairs(LABELS) do
    if info[name] and info[name] ~= '' then fields[#fields + 1] = name; fields[#fields + 1] = info[name] end
  end
  emit(b, EVENT[code], t, fields)
  local dependants = has_part(b, ':dependants') and redis.call('HGET', bkey(b, ':dependants'), t)
  if dependants then
    local cancelled = redis.call('HGET', meta, 'cancelled')
    for d in string.gmatch(dependants, '%S+') do
      if code ~= 's' then
        cancel_tree(b, d, 'c', 'not run: dependency ' .. t .. ' did not succeed')
      elseif redis.call('HINCRBY', bkey(b, ':waiting'), d, -1) == 0 then
        local ds = redis.call('HGET', state, d)
        if ds and FINAL[ds] then  -- ended already (another dependency failed, or a cancel)
        elseif cancelled then
          cancel_tree(b, d, 'c', cancelled)
        else
          enqueue(b, d, redis.call('HGET', bkey(b, ':tasks'), d))
        end
      end
    end
  end
  return true
end

-- The ARQ result record of a task ended without running (cancelled, timed out before it started).
local function unrun_result(b, t, status, reason)
  local task = cjson.decode(redis.call('HGET', bkey(b, ':tasks'), t))
  local result = cjson.encode({task_id = t, status = status, output = '', error = reason,
    agent = task.agent or 'default', mode = '', attempts = 0, duration_s = 0,
    usage = {input_tokens = 0, output_tokens = 0, cache_read_tokens = 0, cache_write_tokens = 0}})
  local id = JOB_ID_PREFIX .. b .. ':' .. t
  return id, '{"t":0,"f":"' .. JOB_NAME .. '","a":[],"k":{},"et":' .. C.now .. ',"s":true,"r":' .. result ..
    ',"st":' .. C.now .. ',"ft":' .. C.now .. ',"q":"' .. C.queue .. '","id":"' .. id .. '"}', task.agent
end

-- Ends t (if not final and not running) with reason, and every task that depends on it, transitively
-- ("dependency X did not succeed", or the same reason when inherit is set, as for a cancelled batch).
-- A running task is asked to abort instead: its worker records how it ended.
cancel_tree = function(b, t, code, reason, inherit)
  local stack = {{t, reason}}
  while #stack > 0 do
    local task, why = unpack(table.remove(stack))
    local state = redis.call('HGET', bkey(b, ':state'), task)
    if state == 'r' then
      redis.call('ZADD', ABORT, C.now, JOB_ID_PREFIX .. b .. ':' .. task)
      C.abort = true
    elseif not (state and FINAL[state]) then
      local id, result, agent = unrun_result(b, task, FINAL[code], why)
      if state == 'q' then
        redis.call('ZREM', C.queue, id)
        redis.call('DEL', JOB .. id, RETRY .. id)
      end
      redis.call('SET', RESULT .. id, result, 'PX', C.keep_ms)
      -- Its dependants are ended from this loop (finalize would recurse once per level).
      local deps = redis.call('HGET', bkey(b, ':dependants'), task)
      redis.call('HDEL', bkey(b, ':dependants'), task)
      finalize(b, task, code, {attempt = 0, error = why, agent = agent})
      if deps then
        local because = inherit and why or ('not run: dependency ' .. task .. ' did not succeed')
        for d in string.gmatch(deps, '%S+') do stack[#stack + 1] = {d, because} end
      end
    end
  end
end
