-- KEYS: queue.
-- ARGV: now ms, wake channel, events maxlen, finished-batch keep ms, job expiry ms, batch id,
--       submission token (the 'submission' field the submit call wrote).
-- Withdraws a batch that could not be enqueued whole: its queued jobs leave the queue unrun, its
-- running ones are asked to abort, and its record, events and results are deleted. A batch written by
-- another submission (the token differs) is left alone. Returns {queued removed, running aborted},
-- or {-1, 0} when the batch is not this submission's.
-- Deletions come first: Redis refuses a script's first write when it is out of memory unless that
-- write frees memory, and this call is made when Redis may be full.
-- #include batch
configure(ARGV[1], KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], '')
local b, token = ARGV[6], ARGV[7]
if redis.call('HGET', bkey(b), 'submission') ~= token then return {-1, 0} end
local states = redis.call('HGETALL', bkey(b, ':state'))
for _, part in ipairs(PARTS) do redis.call('DEL', bkey(b, part)) end
redis.call('DEL', EVENTS .. b, EVENTS .. b .. END_SUFFIX)
redis.call('ZREM', BATCHES, b)
local queued, running = 0, {}
for i = 1, #states, 2 do
  local state, id = states[i + 1], JOB_ID_PREFIX .. b .. ':' .. states[i]
  if state == 'r' then
    running[#running + 1] = id
  else  -- never started (its job goes unrun), or ended (its result goes with the batch)
    if redis.call('ZREM', C.queue, id) == 1 then queued = queued + 1 end
    redis.call('DEL', JOB .. id, RETRY .. id, RESULT .. id)
  end
end
for _, id in ipairs(running) do redis.call('ZADD', ABORT, C.now, id) end
return {queued, #running}
