"""The run record: ``<workdir>/xqute.run.json``, written by the ``RunRecord``
plugin, says how a run was started (scheduler, options minus secrets, the
manager process), so that ``xqute kill`` can stop the run from another shell
and ``xqute status`` can say whether its manager still runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .defaults import JobStatus
from .plugin import plugin
from .utils import logger

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Scheduler
    from .xqute import Xqute

RUN_RECORD_NAME = "xqute.run.json"
# Scheduler options whose values are not written to the run record.
SECRET_OPTION = re.compile(
    r"(?:^|[_-])(?:pass|password|passwd|passphrase|secret|token|credentials?|apikey|api_key"
    r"|private_key)(?:$|[_-])",
    re.I,
)


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), to tell a reused
    pid; None when there is no such process or it has exited (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _redact(arg: str) -> str:
    """``api_token=xyz`` -> ``api_token=***``: the command line may carry secrets."""
    key, sep, _ = arg.partition("=")
    return f"{key}=***" if sep and SECRET_OPTION.search(key) else arg


def _scheduler_ref(scheduler: Scheduler) -> str:
    """The name ``get_scheduler`` takes back: "local" for a built-in, else module:Class."""
    cls = type(scheduler)
    if cls.__module__ == f"xqute.schedulers.{cls.name}_scheduler" or cls.__module__.startswith(
        f"xqute.schedulers.{cls.name}_scheduler."
    ):
        return cls.name
    return f"{cls.__module__}:{cls.__qualname__}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_run_record(workdir: str) -> dict[str, Any] | None:
    """The run record in ``workdir`` (None when there is none or it is unreadable)."""
    try:
        with open(os.path.join(workdir, RUN_RECORD_NAME), encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def manager_alive(record: dict[str, Any] | None) -> bool | None:
    """Whether the record's manager process still runs: None when it cannot be
    told from here (another host, or no record)."""
    if not record or not isinstance(record.get("manager"), dict):
        return None
    manager = record["manager"]
    if manager.get("host") != socket.gethostname():
        return None
    if record.get("ended_at"):
        return False  # the run has ended; its process is at most exiting
    pid = manager.get("pid")
    if not isinstance(pid, int):
        return None
    ticks = process_start_ticks(pid)
    return ticks is not None and ticks == manager.get("start_ticks")


class RunRecord:
    """A plugin writing ``<workdir>/xqute.run.json``: the scheduler and its options
    (secret-looking ones left out), and the manager process, so that
    ``xqute kill`` can stop the run later from another shell.

    Use it in a library run with ``Xqute(..., plugins=[RunRecord()])``.
    """

    name = "xqute_run_record"

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        # set when the run has ended (made in on_init, inside the run's loop)
        self.ended: asyncio.Event | None = None
        self._record: dict[str, Any] = {}
        self._path: Any = None

    @plugin.impl
    def on_init(self, xqute: Xqute) -> None:
        self.signal = None
        self.ended = asyncio.Event()
        scheduler = xqute.scheduler
        opts, omitted = {}, []
        for key, value in xqute.scheduler_opts.items():
            if SECRET_OPTION.search(str(key)):
                omitted.append(key)
            else:
                opts[key] = _json_safe(value)
        self._record = {
            "version": 1,
            "scheduler": _scheduler_ref(scheduler),
            "scheduler_opts": opts,
            "omitted_opts": omitted,
            "workdir": str(scheduler.workdir),
            "forks": scheduler.forks,
            "error_strategy": scheduler.error_strategy,
            "num_retries": scheduler.num_retries,
            "jobname_prefix": scheduler.jobname_prefix,
            "manager": {
                "pid": os.getpid(),
                "start_ticks": process_start_ticks(os.getpid()),
                "host": socket.gethostname(),
                "cwd": os.getcwd(),
                "argv": [_redact(str(arg)) for arg in sys.argv],
            },
            "started_at": _now(),
            "ended_at": None,
        }
        self._path = scheduler.workdir / RUN_RECORD_NAME
        self._write()

    @plugin.impl
    def on_complete(self, xqute: Xqute) -> None:
        # the signal that cancelled the run, if any (on_shutdown also fires at a
        # normal end and on a halt, so it cannot tell)
        self.signal = xqute._cancel_signal
        if self.ended is not None:
            self.ended.set()
        counts: dict[str, int] = {}
        for job in xqute.jobs:
            name = JobStatus.get_name(job._status)
            counts[name] = counts.get(name, 0) + 1  # type: ignore[index]
        self._record["ended_at"] = _now()
        self._record["jobs"] = len(xqute.jobs)
        self._record["counts"] = counts
        self._record["signal"] = signal.Signals(self.signal).name if self.signal else None
        self._write()

    def _write(self) -> None:
        text = json.dumps(self._record, indent=2) + "\n"
        try:
            from panpath import LocalPath

            if isinstance(self._path, LocalPath):
                tmp = f"{self._path}.tmp.{os.getpid()}"
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, str(self._path))
            else:
                self._path.write_text(text)
        except OSError as exc:
            logger.warning("Could not write the run record %s: %s", self._path, exc)
