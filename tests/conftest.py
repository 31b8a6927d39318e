"""Shared fixtures: a workdir whose path has a space in it, and a plugin that
records every hook call."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh workdir with a space in its path (paths with spaces must work)."""
    path = tmp_path / "work dir"
    path.mkdir()
    return path


class Recorder:
    """A plugin that records (hook, job index) for every async job hook."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, int | None]] = []

    def of(self, index: int) -> list[str]:
        return [hook for hook, i in self.events if i == index]


def make_recorder(name: str = "recorder"):
    from xqute import plugin

    rec = Recorder()

    class RecorderPlugin:
        pass

    RecorderPlugin.name = name  # type: ignore[attr-defined]

    def add(hook: str):
        async def impl(scheduler, job):
            rec.events.append((hook, job.index))

        impl.__name__ = hook
        setattr(RecorderPlugin, hook, plugin.impl(impl))

    for hook in (
        "on_job_init",
        "on_job_queued",
        "on_job_submitting",
        "on_job_submitted",
        "on_job_started",
        "on_job_killing",
        "on_job_killed",
        "on_job_failed",
        "on_job_succeeded",
    ):
        add(hook)
    return rec, RecorderPlugin


@pytest.fixture
def recorder():
    import uuid

    rec, plugin_cls = make_recorder(f"recorder_{uuid.uuid4().hex[:8]}")
    return rec, plugin_cls


def processes_with(marker: str) -> list[str]:
    """Command lines of running processes that contain ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != b"Z":
            found.append(f"{entry}: {cmdline}")
    return found


class ActiveCounter:
    """A plugin (build with :func:`make_active_counter`) that counts the jobs
    between submission and their end, and the most there ever were at once."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0


def make_active_counter(name: str):
    from xqute import plugin

    counter = ActiveCounter()

    class CounterPlugin:
        @plugin.impl
        async def on_job_submitted(scheduler, job):
            counter.active += 1
            counter.peak = max(counter.peak, counter.active)

        @plugin.impl
        async def on_job_failed(scheduler, job):
            counter.active -= 1

        @plugin.impl
        async def on_job_succeeded(scheduler, job):
            counter.active -= 1

    CounterPlugin.name = name
    return counter, CounterPlugin
