"""The manager: takes jobs in, keeps ``forks`` of them going, ends the run.

One task runs the whole run. It sleeps only on an event (a job fed, a job ended,
a signal) or, for a polled scheduler, until the next status round is due; each
pass works on the jobs that are queued or active, never on every job ever fed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections import deque
from typing import Any, Iterable, Mapping, Type

from panpath import LocalPath

from . import defaults
from .defaults import JobErrorStrategy, JobStatus
from .job import Job
from .plugin import call_async_hook, implemented, plugin
from .scheduler import Scheduler
from .schedulers import get_scheduler
from .utils import CommandType, logger

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Xqute:
    """Run commands as jobs through a scheduler.

    Args:
        scheduler: a scheduler name ("local", "sge", "slurm", "ssh", "gbatch",
            "container") or a Scheduler subclass.
        plugins: plugins to use during the run (simplug ``plugins_context``).
        workdir: where each job gets its metadir.
        submission_batch: how many submissions run concurrently.
        error_strategy: "ignore", "retry" or "halt".
        num_retries: more trials per failed job under "retry".
        forks: how many jobs may be submitted or running at once.
        scheduler_opts: more options for the scheduler.
        jobname_prefix: prefix of the job names the scheduler sees.

    Must be built inside a running event loop.
    """

    def __init__(
        self,
        scheduler: str | Type[Scheduler] = "local",
        *,
        plugins: Iterable[Any] | None = None,
        workdir: str | os.PathLike = "./.xqute",
        submission_batch: int | None = None,
        error_strategy: str = defaults.DEFAULT_ERROR_STRATEGY,
        num_retries: int = defaults.DEFAULT_NUM_RETRIES,
        forks: int = defaults.DEFAULT_SCHEDULER_FORKS,
        scheduler_opts: Mapping[str, Any] | None = None,
        jobname_prefix: str | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()  # RuntimeError outside a running loop
        # kept so plugins can record how the run was started (xqute kill uses it)
        self.scheduler_opts: dict[str, Any] = dict(scheduler_opts or {})
        scheduler_class = get_scheduler(scheduler)
        self.scheduler: Scheduler = scheduler_class(
            workdir,
            forks=forks,
            error_strategy=error_strategy,
            num_retries=num_retries,
            jobname_prefix=jobname_prefix,
            submission_batch=submission_batch,
            **self.scheduler_opts,
        )
        _check_workdir(self.scheduler.workdir)

        self.jobs: list[Job] = []
        self._queue: deque[Job] = deque()
        # fed, not yet checked for having been left running by an earlier manager
        self._unchecked: list[Job] = []
        self._active: dict[Job, None] = {}  # insertion-ordered set
        self._wake = asyncio.Event()
        self.scheduler.notify = self._wake.set
        self._feeding = False
        self._cancel_signal: signal.Signals | None = None
        self._cancelled = False
        self._halted = False
        self._runner: asyncio.Task | None = None
        # whether on_shutdown fired for this run (a signal, cancel() or a halt)
        self._shutdown_notified = False
        self._signal_handlers: dict[int, Any] = {}
        self._started_at: float | None = None
        # the burst being fed (arrays): when it began, when its last job came
        self._burst_began_at = 0.0
        self._last_fed_at = 0.0

        self.plugin_context = plugin.plugins_context(plugins)
        self.plugin_context.__enter__()
        self._context_left = False
        plugin.hooks.on_init(self)

    # ------------------------------------------------------------------ feeding
    async def feed(self, cmd: CommandType | Job, envs: Mapping[str, Any] | None = None) -> Job:
        """Add a job: a command (string or list of arguments) or a Job."""
        await self.scheduler.ensure_post_init()
        if isinstance(cmd, Job):
            job = cmd
            job.update_envs(envs)
        else:
            job = await self.scheduler.create_job(len(self.jobs), cmd, envs)
        self.jobs.append(job)
        await self.scheduler.queue_job(job)
        now = time.monotonic()
        if not self._queue and not self._unchecked:
            self._burst_began_at = now
        self._last_fed_at = now
        self._unchecked.append(job)
        self._wake.set()
        return job

    def is_feeding(self) -> bool:
        """Whether the run still accepts jobs (``run_until_complete(keep_feeding=True)``)."""
        return self._feeding

    async def stop_feeding(self) -> None:
        """No more jobs will come: wait for the run to finish."""
        self._feeding = False
        self._wake.set()
        if self._runner is not None:
            await self._runner

    async def run_until_complete(self, keep_feeding: bool = False) -> None:
        """Run every fed job to its end.

        With ``keep_feeding`` this returns at once; the run goes on in the
        background while more jobs are fed, until ``await stop_feeding()``.
        """
        if keep_feeding:
            self._feeding = True
            self._runner = asyncio.ensure_future(self._run())
            return
        await self._run()

    # ------------------------------------------------------------------ stopping
    def cancel(self, sig: signal.Signals | None = None) -> None:
        """Ask the run to stop: kill the submitted and running jobs and end.

        Plugins are asked first (``on_shutdown``); one returning False keeps the
        run going.
        """
        if plugin.hooks.on_shutdown(self, sig) is False:
            logger.info("A plugin kept the run going (on_shutdown returned False)")
            return
        if sig is not None:
            logger.warning("Got %s: killing the running jobs", signal.Signals(sig).name)
        self._shutdown_notified = True
        self._cancel_signal = sig
        self._cancelled = True
        self._wake.set()

    def _install_signal_handlers(self) -> None:
        for sig in _SIGNALS:
            try:
                previous = signal.getsignal(sig)
                self._loop.add_signal_handler(sig, self.cancel, sig)
            except (RuntimeError, ValueError, NotImplementedError):
                continue  # not the main thread, or no signals here: nothing to undo
            self._signal_handlers[sig] = previous

    def _remove_signal_handlers(self) -> None:
        for sig, previous in self._signal_handlers.items():
            self._loop.remove_signal_handler(sig)
            # remove_signal_handler resets to the default; put back what was there
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._signal_handlers.clear()

    # ------------------------------------------------------------------ the run
    async def _run(self) -> None:
        self._started_at = time.monotonic()
        self._install_signal_handlers()
        ended_normally = False
        try:
            await self._loop_rounds()
            ended_normally = True
        finally:
            # whatever ended the loop (done, halt, a signal, an error such as a
            # plugin hook that raised), no job is left running behind us
            try:
                if self._active:
                    await self.scheduler.kill_running_jobs(list(self._active))
                    self._active.clear()
                # usage="wait": figures the scheduler's accounting had not given yet
                await self.scheduler.wait_for_usage()
                await self.scheduler.close()
            except Exception:
                logger.exception("Cleaning up the run failed")
            finally:
                self._remove_signal_handlers()
                try:
                    if ended_normally and not self._shutdown_notified:
                        # 2.x clients (pipen) take on_shutdown(xqute, None) as
                        # the natural end of a run, after the last job hook
                        self._shutdown_notified = True
                        plugin.hooks.on_shutdown(self, None)
                    plugin.hooks.on_complete(self)
                finally:
                    self._leave_plugin_context()
                    self._log_summary()

    async def _loop_rounds(self) -> None:
        scheduler = self.scheduler
        hook_interval = defaults.DEFAULT_HOOK_POLL_INTERVAL
        # no wake-up every second for a hook that no enabled plugin implements
        if not implemented("on_job_polling"):
            hook_interval = float("inf")
        next_hook_at = time.monotonic() + hook_interval
        counter = 0
        while True:
            self._wake.clear()
            if self._cancelled or self._halted:
                return
            if self._unchecked:
                await self._adopt_unchecked()
            progressed = await self._submit_ready()
            if not self._active:
                if not self._queue and not self._unchecked and not self._feeding:
                    return
                if not progressed:
                    await self._wait_for_wake(self._burst_wait() or 3600.0)
                continue

            if scheduler.event_driven or scheduler.round_delay() == 0:
                ended = await scheduler.refresh_jobs(list(self._active))
                if ended:
                    await self._handle_ended(ended)
                    continue

            now = time.monotonic()
            if now >= next_hook_at:
                counter += 1
                for job in list(self._active):
                    if job._started:
                        await call_async_hook("on_job_polling", scheduler, job, counter)
                next_hook_at = now + hook_interval
            if self._wake.is_set() or progressed:
                continue
            timeout = min(next_hook_at - now, 3600.0)
            if not scheduler.event_driven:
                timeout = min(timeout, scheduler.round_delay())
            timeout = min(timeout, self._burst_wait() or timeout)
            await self._wait_for_wake(timeout)

    async def _wait_for_wake(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            pass

    def _burst_wait(self) -> float:
        """Seconds to hold queued jobs back for more of the burst being fed,
        so that it goes out as one array (0: submit now). Only while feeding
        goes on (``keep_feeding``), and never longer than ARRAY_BURST_MAX_WAIT
        after the burst began."""
        if not (self._feeding and self._queue and self.scheduler.arrays_enabled):
            return 0.0
        now = time.monotonic()
        due = min(
            self._last_fed_at + defaults.ARRAY_BURST_GAP,
            self._burst_began_at + defaults.ARRAY_BURST_MAX_WAIT,
        )
        return max(0.0, due - now)

    async def _adopt_unchecked(self) -> None:
        """Follow the newly fed jobs that an earlier manager left running (they
        count against ``forks`` at once); queue the others in feeding order."""
        jobs, self._unchecked = self._unchecked, []
        adopted = set(await self.scheduler.adopt_left_running(jobs))
        for job in jobs:
            if job in adopted:
                self._active[job] = None
            else:
                self._queue.append(job)

    async def _submit_ready(self) -> bool:
        """Submit queued jobs while there are free forks; True if any was."""
        scheduler = self.scheduler
        if scheduler.arrays_enabled:
            return await self._submit_as_arrays()
        submitted = False
        while self._queue and len(self._active) < scheduler.forks and not (
            self._cancelled or self._halted
        ):
            room = scheduler.forks - len(self._active)
            batch = [
                self._queue.popleft()
                for _ in range(min(room, scheduler.subm_batch, len(self._queue)))
            ]
            for job in batch:
                self._active[job] = None
            results = await asyncio.gather(
                *(scheduler.submit_job_and_update_status(job) for job in batch)
            )
            submitted = True
            ended = []
            for job, went in zip(batch, results):
                if not went:  # vetoed by a plugin: not run, not waited for
                    self._active.pop(job, None)
                elif JobStatus.is_final(job._status):  # refused by the scheduler
                    ended.append(job)
            if ended:
                await self._handle_ended(ended)
        return submitted

    async def _submit_as_arrays(self) -> bool:
        """Submit all queued jobs as arrays whose throttles add up to the free
        forks: ``forks`` still caps the jobs that run at once, while the
        scheduler, not the manager, holds the members back."""
        room = self.scheduler.forks - len(self._active)
        if room <= 0 or not self._queue or self._cancelled or self._halted or self._burst_wait():
            return False
        jobs = list(self._queue)
        self._queue.clear()
        for job in jobs:
            self._active[job] = None
        went, later = await self.scheduler.submit_burst(jobs, room)
        for job in reversed(later):
            self._active.pop(job, None)
            self._queue.appendleft(job)
        ended = []
        for job, submitted in went.items():
            if not submitted:  # vetoed by a plugin: not run, not waited for
                self._active.pop(job, None)
            elif JobStatus.is_final(job._status):  # refused by the scheduler
                ended.append(job)
        if ended:
            await self._handle_ended(ended)
        return True

    async def _handle_ended(self, jobs: list[Job]) -> None:
        scheduler = self.scheduler
        for job in jobs:
            self._active.pop(job, None)
            if job._status != JobStatus.FAILED:
                continue
            outcome = await scheduler.after_failure(job)
            if outcome == JobErrorStrategy.RETRY:
                self._queue.append(job)
            elif outcome == JobErrorStrategy.HALT and not self._halted:
                logger.error("Job %s failed and the error strategy is halt: stopping", job.index)
                if not self._shutdown_notified:
                    self._shutdown_notified = True
                    # the result is not a veto here: halting is the strategy asked for
                    plugin.hooks.on_shutdown(self, signal.SIGTERM)
                self._halted = True
                self._queue.clear()
                self._unchecked.clear()

    def _leave_plugin_context(self) -> None:
        if not self._context_left:
            self._context_left = True
            self.plugin_context.__exit__(None, None, None)

    def _log_summary(self) -> None:
        counts: dict[str, int] = {}
        for job in self.jobs:
            name = JobStatus.get_name(job._status)
            counts[name] = counts.get(name, 0) + 1  # type: ignore[index]
        elapsed = time.monotonic() - (self._started_at or time.monotonic())
        logger.info(
            "Run ended after %.2f s: %s",
            elapsed,
            ", ".join(f"{n} {name.lower()}" for name, n in sorted(counts.items())) or "no jobs",
        )

    def __del__(self) -> None:  # a run that was never started still leaves its context
        try:
            self._leave_plugin_context()
        except Exception:
            pass


def _check_workdir(workdir: Any) -> None:
    """Refuse, before any job starts, a local workdir that cannot be written."""
    if not isinstance(workdir, LocalPath):
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".xqute-probe-", dir=workdir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"Workdir {str(workdir)!r} is not writable: {exc}") from exc
