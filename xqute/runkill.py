"""Stopping a run from another shell (``xqute kill``): its manager process, when
it runs on this host, then the jobs it left going, through the scheduler the
run record names."""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Mapping

from .runrecord import manager_alive, process_start_ticks
from .schedulers import get_scheduler

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Scheduler


def wait_gone(pid: int, start_ticks: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` s for process ``pid`` to end; True if it did."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):
        fd = None
    try:
        while time.monotonic() < deadline:
            if process_start_ticks(pid) != start_ticks:
                return True
            if fd is not None:
                select.select([fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
            else:
                time.sleep(0.05)
        return process_start_ticks(pid) != start_ticks
    finally:
        if fd is not None:
            os.close(fd)


def stop_manager(record: Mapping[str, Any], wait: float) -> bool:
    """Stop the record's manager when it runs here (SIGTERM, SIGKILL after
    ``wait`` s); True when it was stopped. Raises PermissionError when it runs
    as another user."""
    manager = record.get("manager") or {}
    alive = manager_alive(dict(record))
    if alive is None and manager.get("host") and manager.get("host") != socket.gethostname():
        print(
            f"The manager runs on {manager['host']}: only its jobs are killed from here; "
            "it may submit more until it is stopped there.",
            file=sys.stderr,
        )
    if not alive:
        return False
    pid = manager["pid"]
    print(f"Stopping the manager of the run (pid {pid})...", file=sys.stderr)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it ended meanwhile
    except PermissionError:
        raise PermissionError(
            f"not allowed to stop the manager (pid {pid}): it runs as another user"
        ) from None
    if not wait_gone(pid, manager.get("start_ticks"), wait):
        print(f"The manager (pid {pid}) did not stop in {wait:g} s: killing it", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(pid, manager.get("start_ticks"), 5)
    return True


def scheduler_for_run(
    record: Mapping[str, Any],
    name: str,
    opts: Mapping[str, Any],
    workdir: str,
    forks: int = 1,
) -> Scheduler:
    """A scheduler like the recorded run's: scheduler ``name`` with the recorded
    options updated by ``opts``, on the workdir as the run spelled it (jobs are
    known by their files' paths; ``workdir`` when there is no record).

    Raises ValueError when the scheduler cannot be loaded or set up.
    """
    all_opts = dict(record.get("scheduler_opts") or {})
    all_opts.update(opts)
    missing = [key for key in record.get("omitted_opts") or [] if key not in all_opts]
    if missing:
        print(f"Options not recorded (secrets): {', '.join(missing)}; pass them with --opt "
              "if the scheduler needs them to kill jobs", file=sys.stderr)
    try:
        scheduler_class = get_scheduler(name)
    except (ImportError, ValueError) as exc:
        if ":" in name:
            raise ValueError(f"cannot load the scheduler {name} the run used: {exc}") from None
        raise ValueError(str(exc)) from None
    recorded_workdir = record.get("workdir") or workdir
    manager = record.get("manager") or {}
    if (
        not os.path.isabs(recorded_workdir)
        and "://" not in recorded_workdir
        and record.get("workdir")
        and manager.get("cwd")
    ):
        # a library run with a relative workdir: its jobs name their files from there
        os.chdir(manager["cwd"])
    try:
        return scheduler_class(
            recorded_workdir,
            forks=max(1, forks),
            jobname_prefix=record.get("jobname_prefix"),
            **all_opts,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot set up the {name} scheduler: {exc}") from None
