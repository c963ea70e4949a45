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
local appended = {}
local dead = {}
local added = 0
for i = 9, #ARGV, 3 do
  local t, task, deps = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('HSET', bkey(b, ':tasks'), t, task)
  redis.call('RPUSH', bkey(b, ':order'), t)
  local unmet, failed = 0, nil
  for d in string.gmatch(deps, '%S+') do
    local ds = redis.call('HGET', state, d)
    if ds == 's' then
    elseif ds and FINAL[ds] then
      failed = failed or d
    else
      unmet = unmet + 1
      appended[d] = (appended[d] and appended[d] .. ' ' or '') .. t
    end
  end
  added = added + 1
  if failed then
    redis.call('HSET', state, t, 'p')
    dead[#dead + 1] = {t, 'not run: dependency ' .. failed .. ' did not succeed'}
  elseif unmet > 0 then
    redis.call('HSET', state, t, 'p')
    redis.call('HSET', waiting, t, unmet)
  else
    enqueue(b, t, task)
  end
end
local dependants = bkey(b, ':dependants')
for d, more in pairs(appended) do
  local known = redis.call('HGET', dependants, d)
  redis.call('HSET', dependants, d, known and (known .. ' ' .. more) or more)
end
set_ttl(b, RUNNING_TTL_MS)
for _, entry in ipairs(dead) do cancel_tree(b, entry[1], 'c', entry[2]) end
if #dead > 0 then finish_batch_if_done(b) end
return {1, added, C.last_event or ''}
