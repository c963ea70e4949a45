-- KEYS: queue, leases index. ARGV: worker token, wake channel, then records of five fields:
--   'done',  id, result payload, result ttl ms ('0': keep none; '-1': forever), done-list key or ''
--   'again', id, new score,      '',                                           ''
-- 'done' writes the first final result only (a job that ran twice keeps one result) and tells the
-- batch's waiter; 'again' puts a job this worker still holds back in the queue at the new score.
local requeued = 0
for i = 3, #ARGV, 5 do
  local kind, id = ARGV[i], ARGV[i + 1]
  if kind == 'done' then
    local ttl = ARGV[i + 3]
    if ttl == '-1' then
      redis.call('SET', RESULT .. id, ARGV[i + 2], 'NX')
    elseif ttl ~= '0' then
      redis.call('SET', RESULT .. id, ARGV[i + 2], 'PX', ttl, 'NX')
    end
    redis.call('DEL', JOB .. id, RETRY .. id, IN_PROGRESS .. id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', ABORT, id)
    local done = ARGV[i + 4]
    if done ~= '' then
      redis.call('RPUSH', done, id)
      redis.call('PEXPIRE', done, ttl == '-1' and DONE_LIST_FOREVER_TTL_MS or math.max(tonumber(ttl), DONE_LIST_MIN_TTL_MS))
    end
  elseif redis.call('GET', IN_PROGRESS .. id) == ARGV[1] then
    redis.call('ZADD', KEYS[1], ARGV[i + 2], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('DEL', IN_PROGRESS .. id)
    requeued = requeued + 1
  end
end
if requeued > 0 then redis.call('PUBLISH', ARGV[2], requeued) end
return requeued
