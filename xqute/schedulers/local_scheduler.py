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

Memory (``resources`` ``memory``): each trial gets a memory cgroup of its own,
limited, under a parent for this manager (``MemoryCgroups``), where this
process may make one; the wrapper joins it as its first line (a builtin,
before it forks anything), reads its peak at the end (``peak_memory_file``),
and an OOM kill it counted makes the cause ``oom``. Elsewhere the command's
shell sets ``ulimit -S -d`` (best effort; the cause is ``oom`` when the job's
stderr ends with an allocation error). Time is the wrapper's ``timeout``.

Usage: wrappers are reaped with ``wait4`` (the same one system call as
``waitpid``), whose rusage covers the wrapper and the descendants it waited
for: ``ru_maxrss`` gives the peak memory where no cgroup did (when it is
above the manager's own peak, which the kernel counts into every wrapper that
posix_spawn started), and the CPU where a signal ended the wrapper before it
could measure its command.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import time
from collections import OrderedDict
from typing import Any, Sequence

from panpath import LocalPath

from ..defaults import JOBCMD_WRAPPER_LANG, KILL_GRACE, JobStatus
from ..job import Job
from ..path import cloud_cache_path
from ..scheduler import JobQuery, Scheduler, SubmissionError
from ..utils import logger, shell_quote


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



# ------------------------------------------------------------ memory cgroups
_CGROUP_PREFIX = "xqute-"


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _write_text(path: str, text: str) -> bool:
    try:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(text)
    except OSError:
        return False
    return True


# How a failed allocation under ``ulimit -d`` shows at the end of a job's
# stderr, in the common runtimes: Python, C (strerror ENOMEM), C++, bash, R,
# Java, Go.
_ALLOCATION_ERRORS = re.compile(
    rb"MemoryError|Cannot allocate memory|std::bad_alloc|xmalloc: cannot allocate"
    rb"|cannot allocate vector of size|java\.lang\.OutOfMemoryError"
    rb"|fatal error: runtime: out of memory|[Oo]ut of memory"
)
_STDERR_TAIL = 4096


# Resident-set counters are kept per CPU and read approximately: a figure
# this close to the manager's peak is not taken as the job's.
_PEAK_MARGIN_KB = 4096


def _own_peak_kb() -> int:
    """This process's peak resident set in KB (``VmHWM``: its memory's own,
    without what the kernel counted in from the process that started it)."""
    text = _read_text("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            words = line.split()
            if len(words) >= 2 and words[1].isdigit():
                return int(words[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _allocation_failed(job: Job) -> bool:
    """Whether the last ``_STDERR_TAIL`` bytes of ``job``'s stderr (a local
    file) name a failed allocation."""
    path = job.stderr_file
    if not isinstance(path, LocalPath):
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _STDERR_TAIL))
            return _ALLOCATION_ERRORS.search(fh.read()) is not None
    except OSError:
        return False


def _memory_hierarchy() -> tuple[int, str, str] | str:
    """Where this process's memory cgroup is: (version, mount point, the
    cgroup's path under it), or why there is none."""
    cgroups = _read_text("/proc/self/cgroup")
    mountinfo = _read_text("/proc/self/mountinfo")
    if cgroups is None or mountinfo is None:
        return "no /proc/self/cgroup or /proc/self/mountinfo (not Linux?)"
    v1_path = v2_path = None
    for line in cgroups.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            v1_path = parts[2]
        elif parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
    v1_mount = v2_mount = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, after = left.split(), right.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        # the mount's root within the hierarchy (not "/" without a cgroup
        # namespace) and its mount point; octal escapes (a space) are kept as is
        mount = (fields[3], fields[4])
        if after[0] == "cgroup" and "memory" in after[2].split(",") and v1_mount is None:
            v1_mount = mount
        elif after[0] == "cgroup2" and v2_mount is None:
            v2_mount = mount
    # the memory controller is in one hierarchy only: v1's when it is bound there
    if v1_path is not None and v1_mount is not None:
        version, path, (root, point) = 1, v1_path, v1_mount
    elif v2_path is not None and v2_mount is not None:
        version, path, (root, point) = 2, v2_path, v2_mount
    else:
        return "no memory cgroup hierarchy is mounted"
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root.rstrip("/")):]
    return version, point, path


class MemoryCgroups:
    """Memory cgroups for the jobs of one scheduler: a parent,
    ``xqute-<manager pid>-<token>``, made next to (under) the manager's own
    cgroup where that is writable, and one child per job trial with its limit.

    v1: ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``, no
    swap past it, where present); peak ``memory.max_usage_in_bytes``; an OOM
    kill from ``memory.oom_control``'s ``oom_kill`` counter (kernels >= 4.13),
    else a SIGKILL after ``memory.failcnt`` counted the limit being hit.
    v2: ``memory.max`` (and ``memory.swap.max`` 0); peak ``memory.peak``
    (kernels >= 5.19); ``memory.events``' ``oom_kill``.
    """

    def __init__(self, version: int, parent: str) -> None:
        self.version = version
        self.parent = parent
        self._sequence = 0

    @classmethod
    def find(cls) -> "MemoryCgroups | str":
        """Make this manager's parent cgroup; or say why no cgroup can be made."""
        where = _memory_hierarchy()
        if isinstance(where, str):
            return where
        version, point, path = where
        own = os.path.normpath(point + "/" + path.lstrip("/"))
        candidates = []
        for place in (own, os.path.dirname(own), point):
            if place not in candidates and (place + "/").startswith(point.rstrip("/") + "/"):
                candidates.append(place)
        name = f"{_CGROUP_PREFIX}{os.getpid()}-{os.urandom(3).hex()}"
        reasons = []
        for place in candidates:
            if not os.path.isdir(place):
                continue
            _sweep(place)
            parent = os.path.join(place, name)
            try:
                os.mkdir(parent)
            except OSError as exc:
                reasons.append(f"{place}: {exc.strerror}")
                continue
            if version == 2 and not _v2_memory_delegated(place, parent):
                reasons.append(f"{place}: the memory controller is not enabled below it")
                _rmdir(parent)
                continue
            return cls(version, parent)
        return "no memory cgroup this process may make children in (" + "; ".join(reasons) + ")"

    def make(self, index: int, memory_mb: int) -> str | None:
        """A cgroup for one trial of job ``index`` limited to ``memory_mb``;
        None if it cannot be made or limited."""
        self._sequence += 1
        path = os.path.join(self.parent, f"job{index}.{self._sequence}")
        try:
            os.mkdir(path)
        except OSError as exc:
            logger.warning("Cannot make the memory cgroup %s: %s", path, exc)
            return None
        limit = str(memory_mb * 1048576)
        if self.version == 1:
            done = _write_text(f"{path}/memory.limit_in_bytes", limit)
            # memory plus swap, where the kernel accounts swap: no swapping past the limit
            _write_text(f"{path}/memory.memsw.limit_in_bytes", limit)
        else:
            done = _write_text(f"{path}/memory.max", limit)
            _write_text(f"{path}/memory.swap.max", "0")
        if not done:
            logger.warning("Cannot set the memory limit of the cgroup %s", path)
            _rmdir(path)
            return None
        return path

    def peak_file(self, path: str) -> str | None:
        if self.version == 1:
            return f"{path}/memory.max_usage_in_bytes"
        peak = f"{path}/memory.peak"
        return peak if os.path.exists(peak) else None

    def oom_killed(self, path: str, rc: int | None) -> bool:
        """Whether the kernel's OOM killer killed a process of cgroup ``path``
        (``rc``: the wrapper's exit code, for kernels without the counter)."""
        text = _read_text(f"{path}/memory.oom_control" if self.version == 1 else f"{path}/memory.events")
        for line in (text or "").splitlines():
            words = line.split()
            if len(words) == 2 and words[0] == "oom_kill":
                return words[1].isdigit() and int(words[1]) > 0
        if self.version == 1 and rc == 128 + signal.SIGKILL:
            failcnt = (_read_text(f"{path}/memory.failcnt") or "").strip()
            return failcnt.isdigit() and int(failcnt) > 0
        return False

    def remove(self, path: str) -> bool:
        return _rmdir(path)

    def close(self, paths: Any = ()) -> None:
        """Remove ``paths`` (job cgroups) and then the parent, those empty."""
        for path in paths:
            _rmdir(path)
        _rmdir(self.parent)


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:  # processes left in it (EBUSY): kept for later
        return False
    return True


def _v2_memory_delegated(place: str, parent: str) -> bool:
    """On cgroup v2, whether ``parent`` (just made under ``place``) has the
    memory controller, enabling it where needed; then hand it to its children."""
    controllers = (_read_text(f"{parent}/cgroup.controllers") or "").split()
    if "memory" not in controllers:
        # fails (EBUSY) when ``place`` holds processes itself, as the manager's own does
        _write_text(f"{place}/cgroup.subtree_control", "+memory")
        controllers = (_read_text(f"{parent}/cgroup.controllers") or "").split()
    return "memory" in controllers and _write_text(f"{parent}/cgroup.subtree_control", "+memory")


def _sweep(place: str) -> None:
    """Remove the empty cgroups that managers now dead left under ``place``
    (a manager killed outright cannot remove its own; a cgroup still holding
    a job's processes is not empty, and stays)."""
    try:
        entries = os.listdir(place)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(_CGROUP_PREFIX):
            continue
        pid = entry[len(_CGROUP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or LocalScheduler._pid_alive(int(pid)):
            continue
        parent = os.path.join(place, entry)
        try:
            children = [e.path for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for child in children:
            _rmdir(child)
        _rmdir(parent)


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
        # usage: the wrappers whose rusage (from wait4) is kept, and that
        # rusage, pid -> (user + sys CPU seconds, kept only when a signal ended
        # the wrapper before it could measure its command's; ru_maxrss in KB;
        # whether its cgroup gave the wrapper the peak memory instead)
        self._rusage_wanted: set[int] = set()
        self._rusage: dict[int, tuple[float | None, int, bool]] = {}
        # the manager's own peak resident set (KB), as last read
        self._own_peak_kb = 0
        # memory: this manager's cgroups (None: not looked for yet; a string:
        # why there are none), the cgroup of each job's current trial, the
        # wrapper pid -> (job, cgroup) until it exits, whether that trial was
        # OOM-killed, the best-effort limit (KB) of jobs without a cgroup, and
        # cgroups that still held processes when their wrapper exited
        self._memcg: MemoryCgroups | str | None = None
        self._cgroup_of: dict[Job, str] = {}
        self._cgroup_pid: dict[int, tuple[Job, str]] = {}
        self._oom: dict[Job, bool] = {}
        self._ulimit_of: dict[Job, int] = {}
        self._leftover_cgroups: list[str] = []

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
            fut = loop.run_in_executor(None, os.wait4, pid, 0)
            fut.add_done_callback(lambda f, pid=pid: self._reaped(pid, *f.result()[1:]))
            return True
        self._running[pid] = job
        self._pidfds[pid] = fd
        loop.add_reader(fd, self._on_pidfd, pid, child)
        return True

    def _on_pidfd(self, pid: int, child: bool) -> None:
        fd = self._pidfds.pop(pid)
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        if not child:
            self._exited(pid, None)
            return
        try:
            # wait4, not waitpid: the same one syscall, with the rusage too
            _, status, rusage = os.wait4(pid, 0)
        except ChildProcessError:  # someone else reaped it
            self._exited(pid, None)
            return
        self._reaped(pid, status, rusage)

    def _reaped(self, pid: int, status: int, rusage: Any) -> None:
        """Our child ``pid`` was reaped: keep its rusage where usage is kept.
        The wrapper's rusage covers the descendants it waited for (the
        command): its CPU is theirs and its own, its ru_maxrss the largest
        resident set of any one of them."""
        if pid in self._rusage_wanted:
            self._rusage_wanted.discard(pid)
            cgroup = self._cgroup_pid.get(pid)
            self._rusage[pid] = (
                # the wrapper's own figure (its command's CPU, from ``times``)
                # stands unless a signal ended it before it could take it
                rusage.ru_utime + rusage.ru_stime if os.WIFSIGNALED(status) else None,
                rusage.ru_maxrss,
                cgroup is not None
                and isinstance(self._memcg, MemoryCgroups)
                and self._memcg.peak_file(cgroup[1]) is not None,
            )
        self._exited(pid, status)

    def _exited(self, pid: int, status: int | None) -> None:
        self._running.pop(pid, None)
        if pid in self._cgroup_pid:
            self._cgroup_done(pid, status)
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

    # ------------------------------------------------------------ memory
    def _prepare_memory(self, job: Job) -> None:
        """Before a trial's wrapper is written: a cgroup limited to the memory
        it asks for, where one can be made, else the best-effort limit."""
        self._cgroup_of.pop(job, None)
        self._ulimit_of.pop(job, None)
        self._oom.pop(job, None)
        asked = getattr(job, "resources", None)
        memory_mb = asked.memory_mb if asked else None
        if not memory_mb:
            return
        if self._memcg is None:
            self._memcg = MemoryCgroups.find()
            if isinstance(self._memcg, str):
                logger.warning(
                    "Memory limits are best effort (ulimit -d on each command): %s", self._memcg
                )
            else:
                logger.debug("Memory limits: cgroup v%s under %s", self._memcg.version, self._memcg.parent)
        if isinstance(self._memcg, MemoryCgroups):
            path = self._memcg.make(job.index, memory_mb)
            if path is not None:
                self._cgroup_of[job] = path
                return
        self._ulimit_of[job] = memory_mb * 1024

    def _cgroup_done(self, pid: int, status: int | None) -> None:
        """A wrapper with a memory cgroup exited: note whether the OOM killer
        struck in it, and remove it (or keep it for ``close`` while the
        command's leftovers are still in it)."""
        job, path = self._cgroup_pid.pop(pid)
        if self._cgroup_of.get(job) == path:
            del self._cgroup_of[job]
        assert isinstance(self._memcg, MemoryCgroups)
        rc = os.waitstatus_to_exitcode(status) if status is not None else None
        if self._memcg.oom_killed(path, rc):
            self._oom[job] = True
        if not self._memcg.remove(path):
            self._leftover_cgroups.append(path)

    @property
    def memory_cgroups(self) -> MemoryCgroups | None:
        """The cgroups memory limits are made in (None: none could be, or no
        job asked for memory yet)."""
        return self._memcg if isinstance(self._memcg, MemoryCgroups) else None

    def peak_memory_file(self, job: Job) -> str | None:
        """The peak memory of the job's own cgroup (where it has one)."""
        path = self._cgroup_of.get(job)
        if path is None or not isinstance(self._memcg, MemoryCgroups):
            return None
        return self._memcg.peak_file(path)

    def wrap_job_script(self, job: Job) -> str:
        """The base's wrapper; with a memory cgroup, joining it is its first
        line (a builtin, before anything else runs or allocates); with the
        best-effort limit, the command's shell sets ``ulimit -d`` first
        (``command_shell_setup``)."""
        text = super().wrap_job_script(job)
        path = self._cgroup_of.get(job)
        if path is not None:
            shebang, rest = text.split("\n", 1)
            # (a failure is said in the job's stderr: see jobcmd_wrapper_init)
            join = (
                f"# into the job's memory cgroup (its limit) before anything runs\n"
                f"{{ echo $$ >{shell_quote(path + '/cgroup.procs')}; }} 2>/dev/null "
                f"|| _xq_nolimit={shell_quote(path)}"
            )
            return f"{shebang}\n{join}\n{rest}"
        return text

    def command_shell_setup(self, job: Job) -> str:
        """The best-effort memory limit (``ulimit -d``) of a job without a
        cgroup, for the command's shell only."""
        kilobytes = self._ulimit_of.get(job)
        return "" if kilobytes is None else f"ulimit -S -d {kilobytes} 2>/dev/null"

    @property
    def jobcmd_wrapper_init(self) -> str:
        """The base's; then, in the job's stderr, whether the wrapper could
        not join its memory cgroup (its limit then does not hold)."""
        note = (
            '[ -z "${_xq_nolimit:-}" ] || echo "xqute: could not join the memory cgroup '
            '$_xq_nolimit: the memory limit does not hold" >&2'
        )
        base = super().jobcmd_wrapper_init
        # after the base's (2.x clients expect it to start with the cd)
        return f"{base}\n{note}" if base else note

    async def exit_cause(self, job: Job, rc: int) -> str:
        """The base's reading of ``rc``; a failure whose cgroup counted an OOM
        kill is ``oom``; with the best-effort limit, a failure whose stderr
        ends with an allocation error is ``oom`` too."""
        cause = await super().exit_cause(job, rc)
        if cause in ("ok", "timeout"):
            return cause
        if self._oom.pop(job, False):
            return "oom"
        if job in self._ulimit_of and _allocation_failed(job):
            return "oom"
        return cause

    def job_usage(self, job: Job) -> dict[str, Any]:
        """The wrapper's rusage from wait4 (kept when it was reaped): peak
        memory, unless the job's cgroup gave it (the cgroup's counts every
        process of the job together) or it is not above the manager's own
        peak (see below); CPU when the wrapper could not measure
        it (a signal ended the wrapper itself). A subclass with accounting of
        its own (``usage_from_scheduler``) gets none of it: its accounting
        fills the record."""
        try:
            pid = int(job.jid or "")
        except (TypeError, ValueError):
            return {}
        figures = self._rusage.pop(pid, None)
        if figures is None or self.usage_from_scheduler:
            return {}
        cpu_s, maxrss_kb, cgroup_peak = figures
        usage: dict[str, Any] = {"sources": {}}
        if cpu_s is not None:
            usage["cpu_s"] = round(cpu_s, 3)
            usage["sources"]["cpu_s"] = "rusage"
        if maxrss_kb and not cgroup_peak and self._above_own_peak(maxrss_kb):
            usage["peak_memory_mb"] = round(maxrss_kb / 1024, 1)
            usage["sources"]["peak_memory_mb"] = "rusage"
        return usage

    def _above_own_peak(self, maxrss_kb: int) -> bool:
        """Whether a wrapper's ``maxrss_kb`` is its job's: above the manager's
        own peak resident set (with a margin).

        posix_spawn's child shares the manager's memory until it execs, and
        the kernel then counts that memory's peak into the child's
        ``ru_maxrss`` (a fork would too): a figure not above it may be the
        manager's, and is left out (the job used at most that). The manager's
        peak is its memory's own, ``VmHWM`` in /proc/self/status, not its
        ``ru_maxrss``, which holds the same floor from the process that
        started the manager. It only grows: the value read last is kept, and
        read again only for a figure above it.
        """
        floor = self._own_peak_kb
        if maxrss_kb > floor + _PEAK_MARGIN_KB:
            floor = self._own_peak_kb = _own_peak_kb()
        return maxrss_kb > floor + _PEAK_MARGIN_KB

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
        self._prepare_memory(job)
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
            cgroup = self._cgroup_of.pop(job, None)
            if cgroup is not None and isinstance(self._memcg, MemoryCgroups):
                self._memcg.remove(cgroup)
            raise SubmissionError(f"cannot start {JOBCMD_WRAPPER_LANG}: {exc}") from exc
        if job in self._cgroup_of:
            self._cgroup_pid[pid] = (job, self._cgroup_of[job])
        if self.usage:
            self._rusage_wanted.add(pid)
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
            # os.environ's own bytes: posix_spawn takes them as they are, where
            # os.environ itself would be decoded and encoded again per spawn
            getattr(os.environ, "_data", os.environ),
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
        self._rusage_wanted.clear()
        self._rusage.clear()
        if isinstance(self._memcg, MemoryCgroups):
            # the cgroups of wrappers still running stay (a job outliving its
            # manager keeps its limit); a later manager's sweep removes them
            self._memcg.close(self._leftover_cgroups)
            self._leftover_cgroups.clear()
            self._memcg = None  # looked for again (a parent anew) if jobs follow
