"""xqute: a job queue for asyncio programs.

Hand it shell commands; it runs each as a job through a scheduler (local
processes, SSH hosts, Grid Engine, Slurm, Google Cloud Batch, containers), keeps
each job's state in small files in its own folder, retries or halts on failure,
and tells plugins about every step through simplug hooks.

Importing xqute makes uvloop the event loop policy (as xqute 2.x did); set the
environment variable ``XQUTE_LOOP=asyncio`` before the import to keep asyncio's
own loop. Imported inside a running event loop, xqute leaves the policy alone.
"""

import asyncio as _asyncio
import os as _os



def _loop_is_running() -> bool:
    try:
        _asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# Not when imported inside a running loop: swapping the policy under a running
# asyncio loop leaves it without a child watcher, and subprocesses then fail.
if _os.environ.get("XQUTE_LOOP", "uvloop").lower() != "asyncio" and not _loop_is_running():
    try:
        import uvloop as _uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; be lenient
        pass
    else:
        _asyncio.set_event_loop_policy(_uvloop.EventLoopPolicy())

from .defaults import JobErrorStrategy, JobStatus
from .job import Job
from .plugin import plugin
from .scheduler import Scheduler
from .utils import logger
from .xqute import Xqute

__version__ = "3.0.0"

# third-party plugins registered under the "xqute" entry-point group
plugin.load_entrypoints(group="xqute")

__all__ = [
    "Xqute",
    "Job",
    "Scheduler",
    "JobStatus",
    "JobErrorStrategy",
    "plugin",
    "logger",
    "__version__",
]
