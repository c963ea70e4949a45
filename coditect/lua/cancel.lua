-- KEYS: queue.
-- ARGV: now ms, wake channel, events maxlen, finished-batch keep ms, job expiry ms, worker name,
--       batch id, status code ('c' cancelled, 't' timeout), reason, then task ids.
-- Ends the listed tasks of the batch that have not ended: queued and waiting ones at once, with
-- the reason; running ones are asked to abort (their worker records them). The first call marks
-- the batch, so no task of it is enqueued afterwards; a batch that has finished is left as it is.
-- Returns {queued ended, waiting ended, aborted}, or {-1, 0, 0} when the batch is not recorded.
-- #include batch
configure(ARGV[1], KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local b, code, reason = ARGV[7], ARGV[8], ARGV[9]
local meta = bkey(b)
if redis.call('EXISTS', meta) == 0 then return {-1, 0, 0} end
if redis.call('HEXISTS', meta, 'finished') == 1 then return {0, 0, 0} end
redis.call('HSETNX', meta, 'cancelled', reason)
redis.call('HSETNX', meta, 'cancel_code', code)
local counts = {q = 0, p = 0, r = 0}
local state = bkey(b, ':state')
for i = 10, #ARGV do  -- counted first: ending one task may end its dependants in the same call
  local s = redis.call('HGET', state, ARGV[i])
  if s and counts[s] then counts[s] = counts[s] + 1 end
end
for i = 10, #ARGV do cancel_tree(b, ARGV[i], code, reason, true) end
finish_batch_if_done(b)
return {counts.q, counts.p, counts.r}
