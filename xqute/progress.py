"""Watch a run: counts per status, a live progress bar, and a summary at the end.

``ProgressPlugin`` is a plugin (pass it to ``Xqute(plugins=[...])``). Its hooks
only move counters, so it costs a few dictionary operations per job step; the
bar is drawn by rich's refresh thread a few times a second, from those counters.
When the output is not a terminal it draws nothing and, unless asked to, prints
nothing::

    from xqute import Xqute
    from xqute.progress import ProgressPlugin

    progress = ProgressPlugin()
    xqute = Xqute(forks=4, plugins=[progress])
    for i in range(100):
        await xqute.feed(["sleep", "0.1"])
    await xqute.run_until_complete()
    print(progress.counts())   # {'queued': 0, 'submitted': 0, 'running': 0, ...}
"""

from __future__ import annotations

import heapq
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .plugin import plugin
from .utils import logger

if TYPE_CHECKING:  # pragma: no cover
    from .job import Job
    from .scheduler import Scheduler
    from .xqute import Xqute

# Where a job is, as the plugin sees it (indexes into the counters).
_QUEUED, _SUBMITTED, _RUNNING, _DONE, _FAILED = range(5)
STATE_NAMES = ("queued", "submitted", "running", "done", "failed")


def describe_command(cmd: tuple[str, ...]) -> str:
    """A job's command as a user typed it: ``bash -c LINE`` shows as LINE."""
    if len(cmd) == 3 and cmd[0] in ("bash", "/bin/bash") and cmd[1] == "-c":
        return cmd[2]
    return shlex.join(cmd)


def format_seconds(seconds: float | None) -> str:
    """``0.42s``, ``12.3s``, ``4m05s``, ``2h03m``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_megabytes(megabytes: float | None) -> str:
    """``512M``, ``1.5G``; ``-`` for None."""
    if megabytes is None:
        return "-"
    if megabytes < 1024:
        return f"{megabytes:.0f}M"
    return f"{megabytes / 1024:.1f}G"


def tail_lines(path: str, count: int, max_bytes: int = 16384) -> list[str]:
    """The last ``count`` non-empty lines of a local text file ([] if unreadable)."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    lines = [line.rstrip() for line in data.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line.strip()]
    return lines[-count:]


@dataclass
class RunSummary:
    """What a run did, as the plugin saw it (times in seconds)."""

    total: int
    succeeded: int
    failed: int
    not_run: int
    killed: int
    retried: int  # trials that failed and were retried
    wall_time: float
    # (index, seconds, command), slowest first
    slowest: list[tuple[int, float, str]] = field(default_factory=list)
    # (index, rc, command, last line of stderr), by index
    failures: list[tuple[int, int, str, str]] = field(default_factory=list)
    workdir: str = ""
    # (index, peak memory in MB, command), most first, from the usage records
    most_memory: list[tuple[int, float, str]] = field(default_factory=list)
    # index -> how the job's last trial ended (usage record's cause), failed jobs
    causes: dict[int, str] = field(default_factory=dict)

    def format(self, max_failures: int = 10) -> str:
        """The summary as plain text lines (no colours, no control characters)."""
        rate = self.total / self.wall_time if self.wall_time > 0 else 0.0
        parts = [
            f"{self.succeeded} succeeded",
            f"{self.failed} failed" + (f" ({self.killed} killed)" if self.killed else ""),
        ]
        if self.not_run:
            parts.append(f"{self.not_run} not run")
        if self.retried:
            parts.append(f"{self.retried} retr{'ies' if self.retried != 1 else 'y'}")
        lines = [
            f"xqute: {self.total} job{'s' if self.total != 1 else ''} in "
            f"{format_seconds(self.wall_time)} ({rate:.1f} jobs/s): {', '.join(parts)}"
        ]
        if self.slowest:
            lines.append("Slowest jobs (from submission to end):")
            for index, seconds, cmd in self.slowest:
                lines.append(f"  job {index:<6} {format_seconds(seconds):>8}  {_clip(cmd)}")
        if self.most_memory:
            lines.append("Most memory (peak):")
            for index, megabytes, cmd in self.most_memory:
                lines.append(f"  job {index:<6} {format_megabytes(megabytes):>8}  {_clip(cmd)}")
        if self.failures:
            lines.append("Failed jobs:")
            for index, rc, cmd, last in self.failures[:max_failures]:
                cause = self.causes.get(index, "")
                shown_rc = f"{rc} ({cause})" if cause and cause != "failed" else str(rc)
                line = f"  job {index:<6} rc {shown_rc:<4} {_clip(cmd)}"
                if last:
                    line += f"\n               stderr: {_clip(last, 100)}"
                lines.append(line)
            if len(self.failures) > max_failures:
                lines.append(f"  ... and {len(self.failures) - max_failures} more")
        if self.failed and self.workdir:
            lines.append(f"Details: xqute status {shlex.quote(self.workdir)}")
        return "\n".join(lines)


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class ProgressPlugin:
    """Counts jobs per status, draws a progress bar, reports the run at its end.

    Args:
        display: draw the live bar: None (default) when ``file`` is a terminal
            (and TERM is not "dumb"), True/False to force it.
        summary: print the run summary when the run ends: None (default) when
            the bar is drawn, True always, False never.
        file: where the bar and the summary go (default: sys.stderr).
        slowest: how many of the slowest jobs the summary names.
        refresh_per_second: how often the bar is redrawn.
        name: the plugin's name for simplug.

    After the run, ``counts()`` and ``summary`` tell what happened.
    """

    def __init__(
        self,
        display: bool | None = None,
        summary: bool | None = None,
        file: IO[str] | None = None,
        slowest: int = 5,
        refresh_per_second: float = 4,
        name: str = "xqute_progress",
    ) -> None:
        self.name = name
        self._file = file
        out = file if file is not None else sys.stderr
        if display is None:
            display = _is_terminal(out)
        self.display = bool(display)
        self.print_summary = self.display if summary is None else bool(summary)
        self.slowest_count = slowest
        self.refresh_per_second = refresh_per_second
        self.summary: RunSummary | None = None
        self._reset()

    def _reset(self) -> None:
        self._counts = [0, 0, 0, 0, 0]
        self._state: dict[int, int] = {}
        self._submitted_at: dict[int, float] = {}
        self._slowest: list[tuple[float, int]] = []  # min-heap of (seconds, index)
        self._failed_jobs: dict[int, tuple[Job, float | None]] = {}
        self._killed = 0
        self._retried = 0
        self._total = 0
        self._run_started = time.monotonic()
        self._xqute: Xqute | None = None
        self._live: Any = None
        self._task: Any = None
        self._swapped_handlers: list[tuple[logging.StreamHandler, IO[str]]] = []

    # ------------------------------------------------------------- counters
    def counts(self) -> dict[str, int]:
        """Jobs per state now: queued, submitted, running, done, failed."""
        return dict(zip(STATE_NAMES, self._counts))

    @property
    def total(self) -> int:
        return self._total

    def _move(self, job: Job, state: int) -> int | None:
        """Put ``job`` in ``state``; returns its previous state."""
        counts = self._counts
        previous = self._state.get(job.index)
        if previous is not None:
            counts[previous] -= 1
        counts[state] += 1
        self._state[job.index] = state
        return previous

    def _took(self, job: Job) -> float | None:
        """Seconds since the job's first submission (retries included)."""
        submitted = self._submitted_at.get(job.index)
        return None if submitted is None else time.monotonic() - submitted

    def _rank(self, index: int, seconds: float | None) -> None:
        """Offer a job that ended for good to the slowest-jobs heap."""
        if seconds is None or not self.slowest_count:
            return
        item = (seconds, index)
        if len(self._slowest) < self.slowest_count:
            heapq.heappush(self._slowest, item)
        elif item > self._slowest[0]:
            heapq.heapreplace(self._slowest, item)

    # ---------------------------------------------------------------- hooks
    @plugin.impl
    def on_init(self, xqute: Xqute) -> None:
        self._reset()
        self._xqute = xqute
        if self.display:
            self._start_display()

    @plugin.impl
    async def on_job_queued(self, scheduler: Scheduler, job: Job) -> None:
        previous = self._move(job, _QUEUED)
        if previous is None:  # fed (every fed job is queued once; one hook less per job)
            self._total += 1
        elif previous == _FAILED:  # retried: that failure was not the job's end
            self._retried += 1
            self._failed_jobs.pop(job.index, None)

    @plugin.impl
    async def on_job_submitted(self, scheduler: Scheduler, job: Job) -> None:
        self._move(job, _SUBMITTED)
        # durations run from the first submission: a polled scheduler may notice
        # the start only with the end, and a cluster's queue wait is part of it
        self._submitted_at.setdefault(job.index, time.monotonic())

    @plugin.impl
    async def on_job_started(self, scheduler: Scheduler, job: Job) -> None:
        self._move(job, _RUNNING)

    @plugin.impl
    async def on_job_succeeded(self, scheduler: Scheduler, job: Job) -> None:
        self._move(job, _DONE)
        self._rank(job.index, self._took(job))
        self._submitted_at.pop(job.index, None)

    @plugin.impl
    async def on_job_failed(self, scheduler: Scheduler, job: Job) -> None:
        # ranked at the end of the run: a retry may follow
        self._move(job, _FAILED)
        self._failed_jobs[job.index] = (job, self._took(job))

    @plugin.impl
    async def on_job_killed(self, scheduler: Scheduler, job: Job) -> None:
        self._move(job, _FAILED)
        self._failed_jobs[job.index] = (job, self._took(job))
        self._killed += 1

    @plugin.impl
    def on_complete(self, xqute: Xqute) -> None:
        self.summary = self._summarize(xqute)
        self._stop_display()
        if self.print_summary and self.summary.total:
            out = self._file if self._file is not None else sys.stderr
            print(self.summary.format(), file=out, flush=True)

    # ------------------------------------------------------------- summary
    def _summarize(self, xqute: Xqute) -> RunSummary:
        for index, (_, seconds) in self._failed_jobs.items():
            self._rank(index, seconds)
        self._submitted_at.clear()
        commands = {job.index: job for job in xqute.jobs}
        slowest = [
            (index, seconds, describe_command(commands[index].cmd) if index in commands else "")
            for seconds, index in sorted(self._slowest, reverse=True)
        ]
        failures = []
        for index in sorted(self._failed_jobs):
            job = self._failed_jobs[index][0]
            rc = job._rc if job._rc is not None else -9
            last = _last_stderr_line(job)
            failures.append((index, rc, describe_command(job.cmd), last))
        # the usage records are in memory (job.usage): no file is read here
        peaks = [
            (job.usage["peak_memory_mb"], job.index)
            for job in xqute.jobs
            if job.usage and isinstance(job.usage.get("peak_memory_mb"), (int, float))
        ]
        most_memory = [
            (index, megabytes, describe_command(commands[index].cmd))
            for megabytes, index in heapq.nlargest(self.slowest_count, peaks)
        ]
        causes = {
            index: str(job.usage.get("cause") or "")
            for index, (job, _) in self._failed_jobs.items()
            if job.usage
        }
        counts = self._counts
        return RunSummary(
            total=self._total,
            succeeded=counts[_DONE],
            failed=counts[_FAILED],
            not_run=counts[_QUEUED] + counts[_SUBMITTED] + counts[_RUNNING],
            killed=self._killed,
            retried=self._retried,
            wall_time=time.monotonic() - self._run_started,
            slowest=slowest,
            failures=failures,
            workdir=str(xqute.scheduler.workdir),
            most_memory=most_memory,
            causes=causes,
        )

    # ------------------------------------------------------------- display
    def _start_display(self) -> None:
        # rich is imported only here: a run without a bar never loads it
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        stats = self

        class _Bar(Progress):
            # hooks only bump counters; the bar reads them when it is drawn
            def get_renderables(self):  # type: ignore[override]
                stats._sync_bar(self)
                yield from super().get_renderables()

        console = Console(file=self._file, stderr=self._file is None)
        bar = _Bar(
            SpinnerColumn(finished_text="•" if console.encoding.startswith("utf") else "*"),
            TextColumn("[bold]xqute[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=self.refresh_per_second,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._task = bar.add_task("jobs", total=None, counts="")
        original_stderr = sys.stderr
        bar.start()
        self._live = bar
        self._route_logging(original_stderr)

    def _sync_bar(self, bar: Any) -> None:
        if self._task is None:  # rich draws once before the task is added
            return
        queued, submitted, running, done, failed = self._counts
        parts = [f"queued {queued}"]
        if submitted:
            parts.append(f"submitted {submitted}")
        parts.append(f"[yellow]running {running}[/]")
        parts.append(f"[green]done {done}[/]")
        parts.append(f"[red]failed {failed}[/]" if failed else "failed 0")
        bar.update(
            self._task,
            total=self._total or None,
            completed=done + failed,
            counts=" · ".join(parts),
        )

    def _route_logging(self, original_stderr: Any) -> None:
        """Send log lines that went to the terminal through the bar, above it.

        While the bar is drawn, rich puts a proxy in sys.stderr that prints above
        the bar; logging handlers made earlier still hold the real stream.
        """
        if sys.stderr is original_stderr:
            return
        for log in (logger, logging.getLogger()):
            for handler in log.handlers:
                if type(handler) is logging.StreamHandler and handler.stream in (
                    original_stderr,
                    sys.__stderr__,
                ):
                    self._swapped_handlers.append((handler, handler.stream))
                    handler.setStream(sys.stderr)

    def _stop_display(self) -> None:
        if self._live is None:
            return
        try:
            self._live.refresh()
            self._live.stop()
        finally:
            self._live = None
            for handler, stream in self._swapped_handlers:
                handler.setStream(stream)
            self._swapped_handlers.clear()

    def stop(self) -> None:
        """Take the bar down (the run's end does this; for a run that never ends)."""
        self._stop_display()


def _is_terminal(stream: Any) -> bool:
    if os.environ.get("TERM", "") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _last_stderr_line(job: Job) -> str:
    from panpath import LocalPath

    path = job.stderr_file
    if not isinstance(path, LocalPath):
        return ""
    lines = tail_lines(str(path), 3)
    # the wrapper's own note on a known exit code says less than the line before it
    for line in reversed(lines):
        if not line.startswith("xqute: exit code"):
            return line
    return lines[-1] if lines else ""


__all__ = ["ProgressPlugin", "RunSummary", "describe_command", "format_seconds", "tail_lines"]
