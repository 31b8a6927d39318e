"""Constants and the two small enumerations every other module uses.

Clients overwrite some of these at start-up (``DEFAULT_WORKDIR_NAME`` notably),
so the rest of the package reads them through the module at call time.
"""

from __future__ import annotations

import os


class JobErrorStrategy:
    """What to do when a job fails.

    Attributes:
        IGNORE: record the failure and go on with the other jobs.
        RETRY: put the job back in the queue, up to ``num_retries`` more trials.
        HALT: stop submitting, kill the running jobs and end the run.
    """

    IGNORE: str = "ignore"
    RETRY: str = "retry"
    HALT: str = "halt"

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The three strategies, as the strings ``error_strategy`` takes."""
        return (cls.IGNORE, cls.RETRY, cls.HALT)


class JobStatus:
    """The life of a job, as integers (they are what the status file holds).

    INIT -> QUEUED -> SUBMITTED -> RUNNING -> FINISHED | FAILED, with KILLING on
    the way to FAILED when the job is killed. RUNNING, FINISHED and FAILED are
    written by the job's wrapper; the others by the manager.
    """

    INIT: int = 0
    QUEUED: int = 2
    SUBMITTED: int = 3
    RUNNING: int = 4
    KILLING: int = 5
    FINISHED: int = 6
    FAILED: int = 7
    # value -> name, made by get_name
    _names: "dict[int, str] | None" = None

    @classmethod
    def get_name(cls, *statuses: int) -> tuple[str, ...] | str:
        """Name(s) of status value(s): one name for one value, else a tuple."""
        # (asked once per job at a run's end: the map is built once per class)
        names = cls.__dict__.get("_names")
        if names is None:
            names = {v: k for k, v in vars(cls).items() if k.isupper() and isinstance(v, int)}
            cls._names = names
        found = tuple(names[status] for status in statuses)
        return found[0] if len(found) == 1 else found

    @classmethod
    def is_final(cls, status: int | None) -> bool:
        """Whether ``status`` is an end: FINISHED or FAILED."""
        return status in (cls.FINISHED, cls.FAILED)


DEFAULT_WORKDIR_NAME: str = ".xqute"
DEFAULT_ERROR_STRATEGY: str = JobErrorStrategy.IGNORE
DEFAULT_NUM_RETRIES: int = 3
DEFAULT_SCHEDULER_FORKS: int = 1
DEFAULT_SUBMISSION_BATCH: int = 8
# Accepted from 2.x clients, which pass it to schedulers; the pace of status
# rounds is set by ``poll_interval`` / ``poll_interval_max`` instead.
DEFAULT_RECHECK_INTERVAL: int = 60
DEFAULT_CLOUD_FSPATH: str = os.path.join(
    os.environ.get("TMPDIR", "/tmp"),
    f"xqute_cloud_cache_{os.environ.get('USER') or 'u' + str(os.getuid())}",
)
JOBCMD_WRAPPER_LANG: str = "/bin/bash"

# Seconds between two status rounds of a scheduler that must be polled (the local
# scheduler learns of exits from the processes themselves and is not polled); the
# interval grows by POLL_BACKOFF while nothing changes, up to the maximum.
DEFAULT_POLL_INTERVAL: float = 1.0
DEFAULT_POLL_INTERVAL_MAX: float = 15.0
POLL_BACKOFF: float = 1.5
# Seconds between two ``on_job_polling`` rounds for running jobs.
DEFAULT_HOOK_POLL_INTERVAL: float = 1.0
# Seconds a killed job gets to end after SIGTERM before SIGKILL.
KILL_GRACE: float = 5.0

# Jobs fed within this many seconds of each other count as one burst, which a
# backend with arrays submits as one array (pipen feeds a process's jobs in a
# loop while the run goes on).
ARRAY_BURST_GAP: float = 0.2
# ...and a burst fed steadily is submitted at the latest this long after it began.
ARRAY_BURST_MAX_WAIT: float = 2.0

# At a run's end, seconds to wait before asking a scheduler's accounting once
# more for the usage of jobs it did not have figures for yet.
USAGE_SETTLE = 1.0
