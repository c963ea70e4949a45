"""The Redis key layout: every key prefix, channel and TTL coditect reads or writes, named once.

coditect keeps ARQ's layout (its names come from ``arq.constants``) so that ARQ clients can enqueue
and read results, and adds keys of its own under ``coditect:``:

- ``arq:job:<id>``: the job (JSON: function, args, kwargs, enqueue time); ``arq:result:<id>`` its
  result; ``arq:retry:<id>`` the count of starts; ``arq:in-progress:<id>`` the lease holder's token;
  ``arq:abort`` the jobs asked to abort; the queue (a sorted set, ``CODITECT_QUEUE_NAME``).
- a **lease**: a claimed job stays in the queue with its score moved to the lease deadline, and its
  in-progress key holds the claiming worker's token with the same TTL; ``<queue>:leases`` indexes
  the deadlines, so that claims take a dead worker's jobs first.
- a **wake-up channel** ``<queue>:wake``: enqueuers publish to it, idle workers listen.
- a **batch** ``coditect:batch:<batch>`` (a hash: name, counters, totals, budget, flags) with its
  parts ``:tasks``, ``:order``, ``:state``, ``:waiting``, ``:dependants``, ``:parents``, ``:reserved``
  (see ``coditect/lua/batch.lua``), its event stream ``coditect:events:<batch>`` and the stream of
  all batches ``coditect:events``; ``coditect:batches`` indexes them by creation time. Its end is
  also the one entry of ``coditect:events:<batch>:end`` (a batch id has no colon): a caller that
  wants only the end blocks on it, not woken by every event before.
- **workers** ``coditect:workers`` (token -> last heartbeat) and ``coditect:worker:<token>`` (a
  hash: name, queue, jobs in flight, counts), each worker's channel ``coditect:worker:<token>`` (a
  delegated child's parent is woken there), the dead letters ``coditect:dead-letters``, the
  schedules' last batches ``coditect:schedules``, and a retried job's usage ``coditect:usage:<job>``.
- a worker's **last claim** ``coditect:claim:<token>``: its sequence number and the jobs it claimed,
  kept for one lease, so that a worker whose claim reply was lost can ask for those jobs again.
- **rate limits** under ``coditect:limit:`` (``coditect.llm.limits``): ``tat:<dimension>:<provider>``
  (a provider-wide limit) and ``tat:<dimension>:<provider>:<model>`` hold the theoretical arrival time
  of a limit's next unit (server microseconds); ``cooldown:<provider>:<model>`` the time until which
  every worker leaves that model alone. Each expires on its own a grace period after its time.

The Lua scripts (``coditect.lua``) get these names from here, so nothing spells a prefix twice.
Every script runs on a single Redis (not Redis Cluster), as ARQ does.
"""

from __future__ import annotations

from arq.constants import abort_jobs_ss as ABORT_SET
from arq.constants import expires_extra_ms as JOB_EXPIRY_EXTRA_MS
from arq.constants import health_check_key_suffix as HEALTH_CHECK_SUFFIX
from arq.constants import in_progress_key_prefix as IN_PROGRESS_PREFIX
from arq.constants import job_key_prefix as JOB_PREFIX
from arq.constants import keep_cronjob_progress as CRON_KEEP_IN_PROGRESS_S
from arq.constants import result_key_prefix as RESULT_PREFIX
from arq.constants import retry_key_prefix as RETRY_PREFIX

__all__ = [
    "ABORT_SET",
    "BATCHES_KEY",
    "BATCH_END_SUFFIX",
    "BATCH_KEY_PREFIX",
    "BATCH_RUNNING_TTL_MS",
    "CLAIM_KEY_PREFIX",
    "CRON_KEEP_IN_PROGRESS_S",
    "DEAD_LETTERS_KEY",
    "EVENTS_KEY",
    "EVENTS_KEY_PREFIX",
    "HEALTH_CHECK_SUFFIX",
    "IN_PROGRESS_PREFIX",
    "JOB_EXPIRY_EXTRA_MS",
    "JOB_ID_PREFIX",
    "JOB_NAME",
    "JOB_PREFIX",
    "LIMIT_GRACE_MS",
    "LIMIT_KEY_PREFIX",
    "RESULT_PREFIX",
    "RETRY_COUNTER_TTL_S",
    "RETRY_PREFIX",
    "SCHEDULES_KEY",
    "USAGE_PREFIX",
    "WORKERS_KEY",
    "WORKER_CHANNEL_PREFIX",
    "WORKER_KEY_PREFIX",
    "batch_key",
    "cooldown_key",
    "job_id_for",
    "leases_key",
    "limit_key",
    "split_job_id",
    "wake_channel",
]

# The ARQ function name of coditect's task job.
JOB_NAME = "execute_task"
# ARQ's worker sets this TTL on the retry counter at every start (a literal in arq.worker).
RETRY_COUNTER_TTL_S = 88_400
BATCH_KEY_PREFIX = "coditect:batch:"
BATCHES_KEY = "coditect:batches"
EVENTS_KEY = "coditect:events"
EVENTS_KEY_PREFIX = "coditect:events:"
# The stream after EVENTS_KEY_PREFIX + batch id that holds only the batch's batch.finished event.
BATCH_END_SUFFIX = ":end"
WORKER_CHANNEL_PREFIX = "coditect:worker:"
WORKERS_KEY = "coditect:workers"
WORKER_KEY_PREFIX = "coditect:worker:"
DEAD_LETTERS_KEY = "coditect:dead-letters"
# job id -> the token usage of its attempts so far (a retried task's result counts every attempt).
USAGE_PREFIX = "coditect:usage:"
# Schedule name -> the id of the last batch a tick of it submitted.
SCHEDULES_KEY = "coditect:schedules"
# worker token -> its last claim (sequence number, then job id and row per job), kept for one lease.
CLAIM_KEY_PREFIX = "coditect:claim:"
JOB_ID_PREFIX = "coditect:"
# A batch's keys live this long while it runs (a worker refreshes them), and CODITECT_KEEP_RESULT_S
# once it has finished.
BATCH_RUNNING_TTL_MS = 7 * 86_400_000
LIMIT_KEY_PREFIX = "coditect:limit:"
# A rate-limit key outlives the time it holds by this much, so that a call settling its actual usage
# within a minute of that time still finds it; later, a minute's refill has absorbed any correction.
LIMIT_GRACE_MS = 60_000


def batch_key(batch_id: str, part: str = "") -> str:
    """A batch's hash, or one of its parts: ``batch_key(b, "state")`` is ``coditect:batch:<b>:state``."""
    return BATCH_KEY_PREFIX + batch_id + (":" + part if part else "")


def job_id_for(batch_id: str, task_id: str) -> str:
    """The ARQ job id of a task in a batch. Batch ids have no ``:``, so it splits back unambiguously."""
    return f"{JOB_ID_PREFIX}{batch_id}:{task_id}"


def split_job_id(job_id: str) -> tuple[str, str] | None:
    """``(batch_id, task_id)`` for a coditect job id, None for any other ARQ job."""
    if not job_id.startswith(JOB_ID_PREFIX):
        return None
    batch_id, sep, task_id = job_id[len(JOB_ID_PREFIX) :].partition(":")
    return (batch_id, task_id) if sep and batch_id and task_id else None


def wake_channel(queue_name: str) -> str:
    return queue_name + ":wake"


def leases_key(queue_name: str) -> str:
    return queue_name + ":leases"


def limit_key(dimension: str, provider: str, model: str | None) -> str:
    """The GCRA state of one limit and dimension; ``model=None`` for a provider-wide limit.

    Provider names have no ``:``; the model comes last, so any model name is unambiguous.
    """
    scope = provider if model is None else f"{provider}:{model}"
    return f"{LIMIT_KEY_PREFIX}tat:{dimension}:{scope}"


def cooldown_key(provider: str, model: str) -> str:
    """Until when every worker leaves ``provider``/``model`` alone (after a 429 or 529)."""
    return f"{LIMIT_KEY_PREFIX}cooldown:{provider}:{model}"
