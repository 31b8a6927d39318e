"""Run jobs as processes on this machine.

Each wrapper is spawned with ``posix_spawn`` (cheap, whatever the event loop) in
a session of its own, so a Ctrl-C meant for the manager does not reach the jobs
and a manager killed outright leaves them to finish and record their status.
The scheduler learns of an exit from the process itself (a pidfd becomes
readable), never from a timer. The job id is the wrapper's pid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Sequence

from panpath import LocalPath

from ..defaults import JOBCMD_WRAPPER_LANG, KILL_GRACE, JobStatus
from ..job import Job
from ..path import cloud_cache_path
from ..scheduler import JobQuery, Scheduler, SubmissionError
from ..utils import logger


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _boot_ticks() -> int:
    """Now, in the clock /proc gives process start times in (ticks since boot)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _CLOCK_TICKS)


def _proc_stat(pid: int | str) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat from the state on (index k is field k+3)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses
    return stat[stat.rfind(b")") + 2 :].split()


def _session_members(windows: dict[int, tuple[int, float]]) -> list[int]:
    """Pids in the sessions ``windows`` names that started within the session's
    window (its leader's start to its leader's exit, in boot ticks).

    A session outlives its leader, and once it is empty its number can be reused
    by an unrelated process that starts a session of its own: a process that
    started after our wrapper was gone is never ours.
    """
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - not Linux
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _proc_stat(entry)
        if fields is None or len(fields) < 20:
            continue
        window = windows.get(int(fields[3]))  # field 6: session
        if window is not None and window[0] <= int(fields[19]) <= window[1]:  # field 22: start
            pids.append(int(entry))
    return pids


def _exit_reason(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return (
            f"the job's wrapper was killed by signal {signal.Signals(sig).name} "
            "before it could record a return code"
        )
    return "the job's wrapper exited without recording a return code"


class LocalScheduler(Scheduler):
    """Run each job as a local process (``forks`` at a time)."""

    name = "local"
    event_driven = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # pid -> job, for wrappers still running
        self._running: dict[int, Job] = {}
        # pid -> wait status (None when not our child), for wrappers that ended
        self._ended: dict[int, int | None] = {}
        self._pidfds: dict[int, int] = {}
        self._exit_waiters: dict[int, asyncio.Future] = {}
        # boot tick at which a wrapper being killed was seen to exit
        self._exit_ticks: dict[int, int] = {}
        self._devnull: int | None = None

    # ------------------------------------------------------------ watching
    def _watch(self, pid: int, job: Job, child: bool) -> bool:
        """Be told when ``pid`` exits; False if it is already gone."""
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except (AttributeError, OSError):  # pragma: no cover - no pidfd: a thread waits
            if not child:
                return self._pid_alive(pid)
            self._running[pid] = job
            fut = loop.run_in_executor(None, os.waitpid, pid, 0)
            fut.add_done_callback(lambda f, pid=pid: self._exited(pid, f.result()[1]))
            return True
        self._running[pid] = job
        self._pidfds[pid] = fd
        loop.add_reader(fd, self._on_pidfd, pid, child)
        return True

    def _on_pidfd(self, pid: int, child: bool) -> None:
        fd = self._pidfds.pop(pid)
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        status = None
        if child:
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:  # someone else reaped it
                status = None
        self._exited(pid, status)

    def _exited(self, pid: int, status: int | None) -> None:
        self._running.pop(pid, None)
        self._ended[pid] = status
        if pid in self._exit_waiters:  # being killed: remember when it ended
            self._exit_ticks[pid] = _boot_ticks()
        waiter = self._exit_waiters.pop(pid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.notify()

    @staticmethod
    def _pid_alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    # ------------------------------------------------------------ the interface
    async def submit_job(self, job: Job) -> int:
        """Start the job's wrapper; returns its pid (an int, as in 2.x)."""
        script = await self.wrapped_job_script(job)
        # bash runs a local file: a wrapper in a bucket runs from its local copy
        script_path = str(script.mounted)
        if not isinstance(script.mounted, LocalPath):
            script_path = await script.mounted.get_fspath()
        try:
            pid = self.spawn([JOBCMD_WRAPPER_LANG, script_path])
        except OSError as exc:
            raise SubmissionError(f"cannot start {JOBCMD_WRAPPER_LANG}: {exc}") from exc
        self._watch(pid, job, child=True)
        return pid

    def spawn(self, argv: Sequence[str], output_fd: int | None = None) -> int:
        """Start ``argv`` (``argv[0]`` a path) in a session of its own, with no
        pipe to the manager: stdin from /dev/null, stdout and stderr to
        ``output_fd`` (default /dev/null). Returns its pid; raises OSError."""
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDWR)
        output = self._devnull if output_fd is None else output_fd
        return os.posix_spawn(
            argv[0],
            list(argv),
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, self._devnull, 0),
                (os.POSIX_SPAWN_DUP2, output, 1),
                (os.POSIX_SPAWN_DUP2, output, 2),
            ],
            setsid=True,
        )

    async def query_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobQuery]:
        answers: dict[Job, JobQuery] = {}
        for job in jobs:
            try:
                pid = int(job.jid or "")
            except ValueError:
                answers[job] = JobQuery(JobQuery.ENDED, f"no process id recorded for job {job.index}")
                continue
            if pid in self._running:
                answers[job] = JobQuery(JobQuery.RUNNING)
            elif pid in self._ended:
                status = self._ended.pop(pid)
                answers[job] = JobQuery(
                    JobQuery.ENDED,
                    _exit_reason(status) if status is not None else "the job's wrapper ended "
                    "without recording a return code",
                )
            elif self._is_our_wrapper(pid, job) and self._watch(pid, job, child=False):
                # left running by an earlier manager of the same workdir
                answers[job] = JobQuery(JobQuery.RUNNING)
            else:
                answers[job] = JobQuery(JobQuery.ENDED, f"process {pid} of job {job.index} is gone")
        return answers

    async def job_fails_before_running(self, job: Job) -> bool:
        """True when the pid in the job's jid file is gone and its status file
        is missing or below RUNNING (the wrapper died before it began)."""
        try:
            pid = int((await job.get_jid()) or "")
        except ValueError:
            return False
        if pid in self._running or (pid not in self._ended and self._pid_alive(pid)):
            return False
        status = await job.read_status_file()
        return status is None or status < JobStatus.RUNNING

    def _is_our_wrapper(self, pid: int, job: Job) -> bool:
        """Whether ``pid`` runs this job's wrapper (pids are reused)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            return False
        script = (job.metadir / self.wrapped_script_name).mounted
        path = str(script) if isinstance(script, LocalPath) else cloud_cache_path(script)
        return path.encode() in argv

    async def kill_jobs(self, jobs: Sequence[Job]) -> None:
        """SIGTERM each wrapper (it passes the signal to its command's group and
        records the end), SIGKILL whatever is left after a grace period."""
        pids = []
        started: dict[int, int] = {}
        for job in jobs:
            try:
                pid = int(job.jid or "")
            except ValueError:
                continue
            if pid not in self._running:
                continue
            fields = _proc_stat(pid)
            if fields is None or len(fields) < 20:
                continue
            pids.append(pid)
            started[pid] = int(fields[19])
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if not pids:
            return
        loop = asyncio.get_running_loop()
        waiters = []
        for pid in pids:
            if pid in self._running:
                waiters.append(self._exit_waiters.setdefault(pid, loop.create_future()))
        if waiters:
            await asyncio.wait(waiters, timeout=KILL_GRACE)
        # the wrappers are their sessions' leaders: anything still in those
        # sessions (a command that ignored SIGTERM, its children) is killed now
        windows = {
            pid: (started[pid], self._exit_ticks.pop(pid, float("inf"))) for pid in pids
        }
        for member in _session_members(windows):
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass
        still = [self._exit_waiters[p] for p in pids if p in self._exit_waiters]
        if still:
            await asyncio.wait(still, timeout=KILL_GRACE)
            for pid in pids:
                if pid in self._running:
                    logger.error("Job process %s did not end after SIGKILL", pid)

    async def close(self) -> None:
        """Release what the scheduler holds (called when the run ends)."""
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None
