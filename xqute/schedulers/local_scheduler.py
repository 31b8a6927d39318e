"""Run jobs as processes on this machine.

Each wrapper is spawned with ``posix_spawn`` (cheap, whatever the event loop) in
a session of its own, so a Ctrl-C meant for the manager does not reach the jobs
and a manager killed outright leaves them to finish and record their status.
The scheduler learns of an exit from the process itself (a pidfd becomes
readable), never from a timer. The job id is the wrapper's pid.

CPU budget: the CPUs a job asks for (``resources`` ``cpus``) count against
``cpu_budget`` (the machine's CPUs by default), as the job counts against
``forks``. A job whose CPUs do not fit yet is started *held*: its process
exists (its pid is its job id, as for any job) but waits, in a bash that reads
one line from a pipe only the manager holds, before it execs the wrapper. When
a job that held CPUs ends (its pidfd, as above), the held jobs that now fit are
let go, first come first served. The manager's loop never waits for CPUs, so a
Ctrl-C or a halt is as quick as ever; a manager that dies closes the pipes and
its held jobs exit without running (a rerun runs them). Jobs that ask for no
CPUs do not count.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import OrderedDict
from typing import Any, Sequence

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


# What a held job runs until its CPUs fit: one line from the manager on stdin
# lets it exec the wrapper (with stdin from /dev/null, as for any job); the end
# of the pipe without that line (the manager is gone) ends it without running.
# The held command line keeps the wrapper's path in it, as the wrapper's does.
_HOLD_SCRIPT = 'IFS= read -r _ || exit 75; exec "$@" </dev/null'
_HOLD_NAME = "xqute-held"


def _cpu_budget(value: Any) -> int:
    """``cpu_budget`` checked: a whole number >= 1 (default: the machine's CPUs)."""
    if value is None:
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"cpu_budget must be a whole number of CPUs >= 1, got {value!r}")
    try:
        budget = int(value)
    except ValueError:
        raise ValueError(f"cpu_budget must be a whole number of CPUs >= 1, got {value!r}") from None
    if budget < 1:
        raise ValueError(f"cpu_budget must be a whole number of CPUs >= 1, got {value!r}")
    return budget


def _exit_reason(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return (
            f"the job's wrapper was killed by signal {signal.Signals(sig).name} "
            "before it could record a return code"
        )
    return "the job's wrapper exited without recording a return code"


class LocalScheduler(Scheduler):
    """Run each job as a local process (``forks`` at a time).

    Args:
        cpu_budget: how many CPUs the running jobs may ask for in all
            (``resources``' ``cpus``; default ``os.cpu_count()``): a job waits,
            held, until its CPUs fit. ``resources`` asking for more CPUs than
            the whole budget is a ValueError here; a job that alone asks for
            more (its own ``resources``) fails at submission.
        *args, **kwargs: the options every scheduler takes.
    """

    name = "local"
    event_driven = True
    # whether ``resources``' cpus count against ``cpu_budget`` (the container
    # scheduler, which caps each container with --cpus, keeps no budget)
    keeps_cpu_budget: bool = True

    def __init__(self, *args, cpu_budget: Any = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.keeps_cpu_budget:
            if cpu_budget is not None:
                raise ValueError(
                    f"The {self.name} scheduler keeps no cpu_budget (resources' cpus "
                    "cap each job instead); do not pass it"
                )
            self.cpu_budget: int | None = None
        else:
            self.cpu_budget = _cpu_budget(cpu_budget)
            asked = self.resources.cpus
            if asked is not None and asked > self.cpu_budget:
                raise ValueError(
                    f"resources ask for {asked} CPUs per job, more than the whole "
                    f"cpu_budget ({self.cpu_budget}): no job could ever start; lower "
                    "resources' cpus or raise cpu_budget"
                )
        # CPUs held by running jobs (pid -> cpus), and their sum
        self._cpus_of: dict[int, int] = {}
        self._cpus_in_use = 0
        # held jobs, first come first served: pid -> (cpus, the pipe's write end)
        self._held: OrderedDict[int, tuple[int, int]] = OrderedDict()
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
        # its CPUs (or its place among the held jobs) go to the jobs waiting
        held = self._held.pop(pid, None)
        if held is not None:
            os.close(held[1])
        freed = self._cpus_of.pop(pid, 0)
        self._cpus_in_use -= freed
        if freed or held is not None:
            self._let_go()
        self.notify()

    # ------------------------------------------------------------ the CPU budget
    def cpus_asked(self, job: Job) -> int:
        """The CPUs ``job`` counts against ``cpu_budget`` (0: none asked, or no
        budget kept)."""
        if self.cpu_budget is None:
            return 0
        asked = getattr(job, "resources", None)
        return (asked.cpus or 0) if asked else 0

    @property
    def cpus_in_use(self) -> int:
        """CPUs held by the running jobs."""
        return self._cpus_in_use

    @property
    def held_jobs(self) -> int:
        """How many jobs wait, held, for their CPUs."""
        return len(self._held)

    def _take_cpus(self, pid: int, cpus: int) -> None:
        if cpus:
            self._cpus_of[pid] = self._cpus_of.get(pid, 0) + cpus
            self._cpus_in_use += cpus

    def start_process(self, argv: Sequence[str], cpus: int, output_fd: int | None = None) -> int:
        """Start ``argv`` as ``spawn`` does, for a job asking ``cpus``: at once
        when they fit in the budget (and no job waits before it), else held
        until they do. Returns the pid either way; raises OSError."""
        if not cpus or (not self._held and self._cpus_in_use + cpus <= (self.cpu_budget or 0)):
            pid = self.spawn(argv, output_fd)
            self._take_cpus(pid, cpus)
            return pid
        read_end, write_end = os.pipe()  # not inherited by anything else (O_CLOEXEC)
        try:
            pid = self.spawn(
                [JOBCMD_WRAPPER_LANG, "-c", _HOLD_SCRIPT, _HOLD_NAME, *argv],
                output_fd,
                stdin_fd=read_end,
            )
        except OSError:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._held[pid] = (cpus, write_end)
        logger.debug(
            "Process %s held: it asks for %s CPUs, %s of %s are in use",
            pid, cpus, self._cpus_in_use, self.cpu_budget,
        )
        return pid

    def _let_go(self) -> None:
        """Start the held jobs that fit now, in the order they came."""
        budget = self.cpu_budget or 0
        started = False
        while self._held:
            pid, (cpus, write_end) = next(iter(self._held.items()))
            if self._cpus_in_use + cpus > budget:
                break
            del self._held[pid]
            try:
                os.write(write_end, b"go\n")
            except OSError:  # it is gone already: its exit, on its way, frees the CPUs
                pass
            finally:
                os.close(write_end)
            self._take_cpus(pid, cpus)
            started = True
            logger.debug("Process %s let go: %s CPUs now in use", pid, self._cpus_in_use)
        if started:
            self.notify()  # a round marks them started

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
        cpus = self.cpus_asked(job)
        if self.cpu_budget is not None and cpus > self.cpu_budget:
            raise SubmissionError(
                f"job {job.index} asks for {cpus} CPUs, more than the whole cpu_budget "
                f"({self.cpu_budget}): it could never start"
            )
        try:
            pid = self.start_process([JOBCMD_WRAPPER_LANG, script_path], cpus)
        except OSError as exc:
            raise SubmissionError(f"cannot start {JOBCMD_WRAPPER_LANG}: {exc}") from exc
        self._watch(pid, job, child=True)
        return pid

    def spawn(
        self, argv: Sequence[str], output_fd: int | None = None, stdin_fd: int | None = None
    ) -> int:
        """Start ``argv`` (``argv[0]`` a path) in a session of its own, with no
        pipe to the manager (but a held job's ``stdin_fd``): stdin from
        ``stdin_fd`` (default /dev/null), stdout and stderr to ``output_fd``
        (default /dev/null). Returns its pid; raises OSError."""
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDWR)
        output = self._devnull if output_fd is None else output_fd
        return os.posix_spawn(
            argv[0],
            list(argv),
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, self._devnull if stdin_fd is None else stdin_fd, 0),
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
            if pid in self._held:  # waiting for its CPUs
                answers[job] = JobQuery(JobQuery.PENDING)
            elif pid in self._running:
                answers[job] = JobQuery(JobQuery.RUNNING)
            elif pid in self._ended:
                status = self._ended.pop(pid)
                answers[job] = JobQuery(
                    JobQuery.ENDED,
                    _exit_reason(status) if status is not None else "the job's wrapper ended "
                    "without recording a return code",
                )
            elif self._is_our_wrapper(pid, job) and self._watch(pid, job, child=False):
                # left running by an earlier manager of the same workdir: its
                # CPUs are in use (even past the budget) until it ends
                self._take_cpus(pid, self.cpus_asked(job))
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

    async def find_submitted(self, job: Job, ran: bool) -> int | None:
        """The pid of a process running ``job``'s wrapper: a manager killed
        between starting the wrapper and writing its jid file left it (the
        rerun follows it rather than starting the job a second time)."""
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and self._is_our_wrapper(int(entry.name), job):
                return int(entry.name)
        return None

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
        # held jobs still here (never let go): the end of their pipes ends them
        for _, write_end in self._held.values():
            os.close(write_end)
        self._held.clear()
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None
