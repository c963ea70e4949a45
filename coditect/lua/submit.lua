-- KEYS: queue.
-- ARGV: now ms, wake channel, events maxlen, finished-batch keep ms, job expiry ms, batch id, how
--       ('new': create the batch, 'more': add to the batch the previous call created, 'again':
--       recreate a batch that Redis lost), batch fields as a flat JSON array [name, value, ...],
--       then (task id, task JSON, dependency ids separated by spaces) triples.
-- Tasks come in dependency order (every dependency in an earlier triple or call), so each task's
-- count of unmet dependencies is exact when it is written: a dependency that already succeeded
-- does not count, one that ended otherwise cancels the task at once; a task with none is enqueued.
-- The wake-up goes out first: a Redis user that may not PUBLISH writes nothing.
-- Returns {status, added, last event id}: status 1 created or extended, 0 the batch exists already
-- (nothing written); a waiter that follows the batch's events from that id misses nothing after it.
-- #include batch
configure(ARGV[1], KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], '')
local b, how = ARGV[6], ARGV[7]
local meta = bkey(b)
if how == 'new' and redis.call('EXISTS', meta) == 1 then return {0, 0, ''} end
if how == 'more' and redis.call('EXISTS', meta) == 0 then
  return redis.error_reply('batch ' .. b .. ' is gone: it was cancelled or Redis lost it while it was sent')
end
if #ARGV > 8 then wake_first() end
if how ~= 'more' then
  local fields = cjson.decode(ARGV[8])
  redis.call('HSET', meta, 'created', C.now, unpack(fields))
  redis.call('ZADD', BATCHES, C.now, b)
  emit(b, 'batch.submitted', nil, {'total', redis.call('HGET', meta, 'total') or '0'})
end
local state, waiting = bkey(b, ':state'), bkey(b, ':waiting')
-- Hashes, the order list and the queue are written in a call each after the loop (in the loop's
-- order); the loop reads its own tasks' states from written.
local tasks, order, states, unmet_of, queued = {}, {}, {}, {}, {}
local written = {}
local appended = {}
local dead = {}
local added = 0
local QUEUED = {'attempt', '0'}
for i = 9, #ARGV, 3 do
  local t, task, deps = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  tasks[#tasks + 1] = t
  tasks[#tasks + 1] = task
  order[#order + 1] = t
  local unmet, failed = 0, nil
  for d in string.gmatch(deps, '%S+') do
    local ds = written[d]
    if ds == nil then ds = redis.call('HGET', state, d) end
    if ds == 's' then
    elseif ds and FINAL[ds] then
      failed = failed or d
    else
      unmet = unmet + 1
      appended[d] = (appended[d] and appended[d] .. ' ' or '') .. t
    end
  end
  added = added + 1
  local s = 'q'
  if failed then
    s = 'p'
    dead[#dead + 1] = {t, 'not run: dependency ' .. failed .. ' did not succeed'}
  elseif unmet > 0 then
    s = 'p'
    unmet_of[#unmet_of + 1] = t
    unmet_of[#unmet_of + 1] = unmet
  else
    local id = JOB_ID_PREFIX .. b .. ':' .. t
    redis.call('SET', JOB .. id, envelope(task), 'PX', C.expiry_ms)
    queued[#queued + 1] = C.now
    queued[#queued + 1] = id
    emit(b, 'task.queued', t, QUEUED)
  end
  written[t] = s
  states[#states + 1] = t
  states[#states + 1] = s
end
bulk('HSET', bkey(b, ':tasks'), tasks)
bulk('RPUSH', bkey(b, ':order'), order)
bulk('HSET', state, states)
bulk('HSET', waiting, unmet_of)
bulk('ZADD', C.queue, queued)
if #queued > 0 then wake() end
local dependants = bkey(b, ':dependants')
for d, more in pairs(appended) do
  local known = redis.call('HGET', dependants, d)
  redis.call('HSET', dependants, d, known and (known .. ' ' .. more) or more)
  mark_part(b, ':dependants')
end
set_ttl(b, RUNNING_TTL_MS)
for _, entry in ipairs(dead) do cancel_tree(b, entry[1], 'c', entry[2]) end
if #dead > 0 then finish_batch_if_done(b) end
return {1, added, C.last_event or ''}
