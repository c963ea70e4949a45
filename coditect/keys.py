"""Redis keys and the Lua scripts that change them, in one place.

coditect keeps ARQ's key layout (``arq:job:<id>``, the queue ZSET, ``arq:in-progress:<id>``,
``arq:retry:<id>``, ``arq:result:<id>``, ``arq:abort``) so that ARQ clients can enqueue and read
results, and adds three things of its own:

- a **lease**: a claimed job stays in the queue ZSET (as in ARQ) with its score moved to the
  lease deadline, and its ``in-progress`` key holds the claiming worker's token with the same
  TTL. The worker renews both while the job runs. If the worker dies, the score falls due when
  the lease ends and any worker claims the job again: recovery takes one lease, not the job timeout.
  The lease deadlines are also kept in ``<queue>:leases``, so that claims take a dead worker's
  jobs first instead of after every job queued before its lease ran out.
- a **wake-up channel** ``<queue>:wake``: enqueuers publish to it, idle workers listen.
- a **done list** ``coditect:done:<batch>`` per batch: workers push the task id of every finished
  job, so a waiting orchestrator blocks on one list instead of polling every job.

Every script takes its keys by convention from ARQ's fixed prefixes, so it runs on a single Redis
(not Redis Cluster), as ARQ does.
"""

from __future__ import annotations

__all__ = [
    "BATCH_KEY_PREFIX",
    "CANCEL_LUA",
    "CLAIM_LUA",
    "ENQUEUE_LUA",
    "FINISH_LUA",
    "HEARTBEAT_LUA",
    "done_key",
    "job_id_for",
    "split_job_id",
    "wake_channel",
]

BATCH_KEY_PREFIX = "coditect:batch:"
DONE_KEY_PREFIX = "coditect:done:"
JOB_ID_PREFIX = "coditect:"


def job_id_for(batch_id: str, task_id: str) -> str:
    """The ARQ job id of a task in a batch. Batch ids have no ``:``, so it splits back unambiguously."""
    return f"{JOB_ID_PREFIX}{batch_id}:{task_id}"


def split_job_id(job_id: str) -> tuple[str, str] | None:
    """``(batch_id, task_id)`` for a coditect job id, None for any other ARQ job."""
    if not job_id.startswith(JOB_ID_PREFIX):
        return None
    batch_id, sep, task_id = job_id[len(JOB_ID_PREFIX) :].partition(":")
    return (batch_id, task_id) if sep and batch_id and task_id else None


def done_key(batch_id: str) -> str:
    return DONE_KEY_PREFIX + batch_id


def wake_channel(queue_name: str) -> str:
    return queue_name + ":wake"


# KEYS: queue. ARGV: score, job expiry ms, wake channel, then (job id, payload) pairs.
# Adds the jobs that are neither queued nor finished; wakes idle workers; returns how many it added.
ENQUEUE_LUA = """
local added = 0
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('EXISTS', 'arq:job:' .. id, 'arq:result:' .. id) == 0 then
    redis.call('PSETEX', 'arq:job:' .. id, ARGV[2], ARGV[i + 1])
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    added = added + 1
  end
end
if added > 0 then redis.call('PUBLISH', ARGV[3], added) end
return added
"""

# KEYS: queue. ARGV: now ms, lease ms, max jobs, worker token.
# Claims up to max due jobs nobody holds. Returns {id, payload, try, score, aborted} per job.
# Jobs whose lease ran out (their worker died) come first: their queue score is the lease deadline,
# which would put them behind every job queued before it. Then the queue head, in score order.
# Due jobs held by someone else (a plain ARQ worker keeps a running job's score) are stepped over,
# reading at most ten pages of the queue head per call (a claimed job leaves the due range).
CLAIM_LUA = """
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local leases = KEYS[1] .. ':leases'
local claimed = {}
local function claim(id, score)
  local payload = redis.call('GET', 'arq:job:' .. id) or ''
  local try = redis.call('INCR', 'arq:retry:' .. id)
  redis.call('EXPIRE', 'arq:retry:' .. id, 88400)
  redis.call('SET', 'arq:in-progress:' .. id, ARGV[4], 'PX', lease)
  redis.call('ZADD', KEYS[1], now + lease, id)
  redis.call('ZADD', leases, now + lease, id)
  local aborted = redis.call('ZREM', 'arq:abort', id)
  claimed[#claimed + 1] = {id, payload, try, score, aborted}
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, want)) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if not score or tonumber(score) > now then
    redis.call('ZREM', leases, id)  -- finished, cancelled or rescheduled since: not a lost lease
  elseif redis.call('EXISTS', 'arq:in-progress:' .. id) == 0 then
    claim(id, score)
  end
end
local held = 0
for _ = 1, 10 do
  local page = want - #claimed
  if page <= 0 then break end
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', held, page)
  for _, id in ipairs(ids) do
    if redis.call('EXISTS', 'arq:in-progress:' .. id) == 0 then
      claim(id, redis.call('ZSCORE', KEYS[1], id))
    else
      held = held + 1
    end
  end
  if #claimed >= want or #ids < page then break end
end
return claimed
"""

# KEYS: queue. ARGV: now ms, lease ms, worker token, then job ids.
# Renews the lease of the jobs this worker still holds; returns how many it renewed.
HEARTBEAT_LUA = """
local deadline = tonumber(ARGV[1]) + tonumber(ARGV[2])
local renewed = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('GET', 'arq:in-progress:' .. id) == ARGV[3] then
    redis.call('PEXPIRE', 'arq:in-progress:' .. id, ARGV[2])
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    redis.call('ZADD', KEYS[1] .. ':leases', 'XX', deadline, id)
    renewed = renewed + 1
  end
end
return renewed
"""

# KEYS: queue. ARGV: worker token, wake channel, then records of five fields:
#   'done',  id, result payload, result ttl ms ('0': keep none; '-1': forever), done-list key or ''
#   'again', id, new score,      '',                                           ''
# 'done' writes the first final result only (a job that ran twice keeps one result) and tells the
# batch's waiter; 'again' puts a job this worker still holds back in the queue at the new score.
FINISH_LUA = """
local requeued = 0
for i = 3, #ARGV, 5 do
  local kind, id = ARGV[i], ARGV[i + 1]
  if kind == 'done' then
    local ttl = ARGV[i + 3]
    if ttl == '-1' then
      redis.call('SET', 'arq:result:' .. id, ARGV[i + 2], 'NX')
    elseif ttl ~= '0' then
      redis.call('SET', 'arq:result:' .. id, ARGV[i + 2], 'PX', ttl, 'NX')
    end
    redis.call('DEL', 'arq:job:' .. id, 'arq:retry:' .. id, 'arq:in-progress:' .. id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[1] .. ':leases', id)
    redis.call('ZREM', 'arq:abort', id)
    local done = ARGV[i + 4]
    if done ~= '' then
      redis.call('RPUSH', done, id)
      redis.call('PEXPIRE', done, ttl == '-1' and 86400000 or math.max(tonumber(ttl), 60000))
    end
  elseif redis.call('GET', 'arq:in-progress:' .. id) == ARGV[1] then
    redis.call('ZADD', KEYS[1], ARGV[i + 2], id)
    redis.call('ZREM', KEYS[1] .. ':leases', id)
    redis.call('DEL', 'arq:in-progress:' .. id)
    requeued = requeued + 1
  end
end
if requeued > 0 then redis.call('PUBLISH', ARGV[2], requeued) end
return requeued
"""

# KEYS: queue. ARGV: now ms, result ttl ms, then (job id, cancelled-result payload, done-list key
# or '') triples. A queued job is removed before any worker starts it, and its batch's waiter told;
# a running one is asked to abort.
CANCEL_LUA = """
local dequeued, aborted = 0, 0
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('EXISTS', 'arq:in-progress:' .. id) == 1 then
    redis.call('ZADD', 'arq:abort', ARGV[1], id)
    aborted = aborted + 1
  elseif redis.call('EXISTS', 'arq:result:' .. id) == 0 and redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('DEL', 'arq:job:' .. id, 'arq:retry:' .. id)
    redis.call('SET', 'arq:result:' .. id, ARGV[i + 1], 'PX', ARGV[2])
    if ARGV[i + 2] ~= '' then
      redis.call('RPUSH', ARGV[i + 2], id)
      redis.call('PEXPIRE', ARGV[i + 2], ARGV[2])
    end
    dequeued = dequeued + 1
  end
end
return {dequeued, aborted}
"""
