"""The hooks plugins implement (simplug project "xqute", entry-point group "xqute").

Async hooks take ``(scheduler, job)``. A hook that returns False from
``on_job_submitting`` / ``on_job_killing`` vetoes that step; ``on_shutdown`` returning
False keeps the run going. The ``on_jobcmd_*`` hooks return bash code that the
wrapper runs: after the job's environment is exported (init), right before the
command (prep, where ``$cmd`` holds the quoted command line and may be changed),
and on exit after the return code is recorded (end, where ``$rc`` holds it).
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from simplug import Simplug, SimplugResult

if TYPE_CHECKING:  # pragma: no cover
    from .job import Job
    from .scheduler import Scheduler
    from .xqute import Xqute

plugin = Simplug("xqute")


@plugin.spec
def on_init(xqute: "Xqute") -> None:
    """Right after the Xqute instance is set up."""


@plugin.spec
def on_complete(xqute: "Xqute") -> None:
    """The run ended (every job done, halted or cancelled), before its plugin
    context is left: the place for a plugin to report on the whole run."""


@plugin.spec(result=SimplugResult.TRY_ALL_FIRST_AVAIL)
def on_shutdown(xqute: "Xqute", sig: signal.Signals | None) -> bool | None:
    """When the run is asked to stop (``cancel()`` or SIGINT/SIGTERM); False keeps it going."""


@plugin.spec
async def on_job_init(scheduler: "Scheduler", job: "Job") -> None:
    """A job was created and fed."""


@plugin.spec
async def on_job_queued(scheduler: "Scheduler", job: "Job") -> None:
    """A job entered the queue (again, when retried)."""


@plugin.spec(result=SimplugResult.TRY_ALL_FIRST_AVAIL)
async def on_job_submitting(scheduler: "Scheduler", job: "Job") -> bool | None:
    """Before a job is submitted; False skips the submission."""


@plugin.spec
async def on_job_submitted(scheduler: "Scheduler", job: "Job") -> None:
    """A job was handed to the scheduler."""


@plugin.spec
async def on_job_started(scheduler: "Scheduler", job: "Job") -> None:
    """A job began running (always before on_job_failed/on_job_succeeded)."""


@plugin.spec
async def on_job_polling(scheduler: "Scheduler", job: "Job", counter: int) -> None:
    """Called periodically for each running job."""


@plugin.spec(result=SimplugResult.TRY_ALL_FIRST_AVAIL)
async def on_job_killing(scheduler: "Scheduler", job: "Job") -> bool | None:
    """Before a job is killed; False skips the kill."""


@plugin.spec
async def on_job_killed(scheduler: "Scheduler", job: "Job") -> None:
    """A job was killed."""


@plugin.spec
async def on_job_failed(scheduler: "Scheduler", job: "Job") -> None:
    """A trial of a job failed (it may still be retried: see job.trial_count)."""


@plugin.spec
async def on_job_succeeded(scheduler: "Scheduler", job: "Job") -> None:
    """A job finished with return code 0."""


@plugin.spec(result=SimplugResult.ALL_AVAILS)
def on_jobcmd_init(scheduler: "Scheduler", job: "Job") -> str:
    """Bash code run in the wrapper after the job's environment is exported."""


@plugin.spec(result=SimplugResult.ALL_AVAILS)
def on_jobcmd_prep(scheduler: "Scheduler", job: "Job") -> str:
    """Bash code run in the wrapper right before the command (``$cmd``)."""


@plugin.spec(result=SimplugResult.ALL_AVAILS)
def on_jobcmd_end(scheduler: "Scheduler", job: "Job") -> str:
    """Bash code run in the wrapper on exit, after the return code (``$rc``) is recorded."""


# hook name -> whether an enabled plugin implements it, for the registry state
# in _implemented_for: calling a hook nobody implements still costs simplug
# several microseconds, and a job fires about ten
_implemented: dict[str, bool] = {}
_implemented_for: tuple = ()
# the plugins _implemented_for names by id, kept alive so that no other object
# can take one of those ids while it is the key
_implemented_plugins: list = []


def implemented(hook: str) -> bool:
    """Whether any enabled plugin implements ``hook`` (so that a call of it
    can be skipped when none does). Follows plugins registered, enabled and
    disabled at any time."""
    global _implemented_for, _implemented_plugins
    try:
        # (dict.values: the registry is a dict subclass whose own values() is slow)
        wrappers = dict.values(plugin.hooks._registry)
        state = tuple([(id(wrapper.plugin), wrapper.enabled) for wrapper in wrappers])
    except (AttributeError, TypeError):  # a simplug whose insides differ: call it
        return True
    if state != _implemented_for:
        _implemented.clear()
        _implemented_for = state
        _implemented_plugins = [wrapper.plugin for wrapper in wrappers]
    found = _implemented.get(hook)
    if found is None:
        found = _implemented[hook] = any(
            wrapper.enabled and wrapper.hook(hook) is not None for wrapper in wrappers
        )
    return found


def call_hook(name: str, *args: Any) -> Any:
    """Call the sync hook ``name``, or return None without calling it when
    no enabled plugin implements it (``implemented``)."""
    return getattr(plugin.hooks, name)(*args) if implemented(name) else None


async def call_async_hook(name: str, *args: Any) -> Any:
    """Await the async hook ``name``, or return None without calling it when
    no enabled plugin implements it (``implemented``)."""
    return await getattr(plugin.hooks, name)(*args) if implemented(name) else None
