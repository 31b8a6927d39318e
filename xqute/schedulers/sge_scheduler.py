"""Run jobs on Grid Engine (Son of Grid Engine 8.x, Open Grid Scheduler, UGE).

Each job is its wrapper script submitted with ``qsub``; the scheduler's own
options become ``#$`` directive lines at the top of that script. Status comes
from the job's meta files first; the jobs those leave open are put to Grid
Engine in one ``qstat -xml`` call per status round (the base class paces the
rounds and backs off while nothing changes). A job that leaves ``qstat``
without having written its return code is looked up in ``qacct`` so the
reason (exit status, ``failed`` code) lands in its stderr file.

``resources`` map onto Grid Engine's own requests: cpus to a parallel
environment (``-pe smp N``), memory to ``h_vmem`` per slot, time to ``h_rt``,
the nodes a retry keeps away from to a ``hostname`` request that excludes
them. Usage figures (peak memory, CPU, host) come from ``qacct``, batched.

A burst of queued jobs goes to Grid Engine as ONE array job (``qsub -t 1-N
-tc <throttle>``): each task execs its member's own wrapper, and a member's job
id is ``<job number>.<task id>`` (``123.5``). ``qstat``, ``qacct`` and ``qdel``
answer and act on members by that id; plain ids (``123``) work as before.
"""

from __future__ import annotations

import asyncio
import getpass
import math
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from typing import Any, Iterable, Sequence

from panpath import LocalPath

from ..defaults import JOBCMD_WRAPPER_LANG, JobStatus
from ..directives import render_directives
from ..job import Job
from ..path import read_meta, write_meta
from ..resources import Resources
from ..scheduler import RC_SUBMISSION_FAILED, RC_VANISHED, JobQuery, Scheduler, SubmissionError
from ..utils import chunks, logger, run_command

# Characters Grid Engine refuses in a job name (sge_types(1), "name").
_BAD_NAME_CHARS = re.compile(r"[\n\t\r /:@\\*?]")
# A directive key is a qsub option name without its dash (``l``, ``pe``, ``notify``).
# (matched whole: "$" would let a trailing newline through, and with it a line
# of shell code after the directive)
_KEY_RE = re.compile(r"-?[A-Za-z][A-Za-z0-9_]*", re.ASCII)
# A job number as qsub -terse prints it (``12`` or ``12.1-4:1`` for an array).
_JOB_NUMBER_RE = re.compile(r"[0-9]+", re.ASCII)
# qsub/qstat/qdel failures that go away by themselves: qmaster busy, restarting,
# unreachable for a moment, or a per-user job limit reached.
_TRANSIENT_RE = re.compile(
    r"commlib error|unable to contact qmaster|unable to send message to qmaster"
    r"|failed receiving gdi request|got send error|got select error|connection refused"
    r"|timed out|qmaster is not alive|too many jobs|only \d+ jobs are allowed"
    r"|try again later|temporarily",
    re.IGNORECASE,
)
# Letters of qstat's state column that mean the job has (or had) a slot.
_RUNNING_LETTERS = set("rtsST")  # not "R": "Rq" is a restarted job waiting
# Options whose value is one path: quoted like xqute's own paths, so a path
# with spaces stays one argument.
_PATH_OPTIONS = {"o", "e", "i", "wd", "S"}
# Directives the scheduler sets itself unless the user gives them.
_OWN_DIRECTIVES = ("N", "S", "o", "e", "wd", "cwd")

# A parallel environment's name as ``-pe`` takes it (wildcards allowed).
_PE_NAME_RE = re.compile(r"[A-Za-z0-9_.+*?\[\]-]+", re.ASCII)
# A host name that can go into a ``hostname`` request.
_HOST_RE = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)
# Grid Engine's memory specifier (sge_types(1)): K, M, G, T are powers of
# 1024, k, m, g, t of 1000; qacct 8.1.9 also prints a "B" after the unit.
_SGE_MEMORY_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*([KMGTkmgt]?)B?", re.ASCII)
_SGE_MEMORY_UNITS = {
    "": 1.0, "K": 1024.0, "M": 1024.0**2, "G": 1024.0**3, "T": 1024.0**4,
    "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
}
# What programs print when an allocation is refused (h_vmem is a setrlimit
# of the address space: the program sees ENOMEM and says so itself).
_MEMORY_STDERR_RE = re.compile(
    r"MemoryError|Cannot allocate memory|bad_alloc|out ?of ?memory|memory exhausted"
    r"|cannot allocate|unable to allocate|memory allocation failed",
    re.IGNORECASE,
)
# qacct's failed code for a job execd killed over a limit ("qmaster enforced
# h_rt, h_cpu, or h_vmem limit"); such a job's exit_status is 137 (SIGKILL).
_LIMIT_FAILED = "37"
# The share of its h_vmem a job killed over a limit must have reached (qacct's
# maxvmem, sampled) to count as out of memory.
_VMEM_NEAR_LIMIT = 0.9

# Meaning of qacct's ``failed`` codes that matter here (the rest are printed
# by qacct itself, after the number).
_QDEL_FAILED = "100"
# Job numbers given to one qdel call at most.
_QDEL_MAX_IDS = 500

# A member of an array job: ``<job number>.<task id>``.
_MEMBER_JID_RE = re.compile(r"([0-9]+)\.([0-9]+)", re.ASCII)
# One item of a task list as qstat prints it: ``5``, ``1-10`` or ``1-10:2``.
_TASK_RANGE_RE = re.compile(r"([0-9]+)(?:-([0-9]+)(?::([0-9]+))?)?", re.ASCII)
# The most tasks of one array when Grid Engine's max_aj_tasks is 0 (no limit),
# or when it cannot be read: Grid Engine's own default.
UNLIMITED_ARRAY_SIZE = 75000
# The folder under the workdir holding the array scripts, and per array a
# folder of links that route Grid Engine's output of each task to its member.
ARRAYS_DIR = ".arrays"


def split_jid(jid: Any) -> tuple[str, int | None]:
    """``("123", 5)`` for an array member's ``123.5``, ``("123", None)`` for a
    plain job id."""
    match = _MEMBER_JID_RE.fullmatch(str(jid))
    if match:
        return match.group(1), int(match.group(2))
    return str(jid), None


def parse_task_ranges(text: str) -> list[tuple[int, int, int]]:
    """qstat's task list (``1-10:1``, ``3``, ``1,4-9:1``, ``2-10:2``) as
    (first, last, step) triples; items it cannot read are left out."""
    ranges = []
    for item in text.split(","):
        match = _TASK_RANGE_RE.fullmatch(item.strip())
        if not match:
            continue
        first = int(match.group(1))
        last = int(match.group(2) or first)
        step = max(1, int(match.group(3) or 1))
        ranges.append((first, last, step))
    return ranges


def _in_ranges(task: int, ranges: Iterable[tuple[int, int, int]]) -> bool:
    return any(first <= task <= last and (task - first) % step == 0 for first, last, step in ranges)


def task_ranges(tasks: Iterable[int]) -> list[str]:
    """Task ids as the fewest ``a-b`` (or ``a``) ranges, for qdel/qacct ``-t``."""
    ranges: list[list[int]] = []
    for task in sorted(set(tasks)):
        if ranges and task == ranges[-1][1] + 1:
            ranges[-1][1] = task
        else:
            ranges.append([task, task])
    return [str(a) if a == b else f"{a}-{b}" for a, b in ranges]


class QstatListing:
    """What one ``qstat -xml`` call lists, by job number: each entry's name,
    state and the tasks it covers (None for a job that is not an array).

    Grid Engine lists a pending array as one entry whose ``<tasks>`` holds
    ranges (``1-10:1``), and each running task as an entry of its own
    (``<tasks>3</tasks>``)."""

    def __init__(self) -> None:
        self.entries: dict[str, list[tuple[str, str, list[tuple[int, int, int]] | None]]] = {}

    def add(self, number: str, name: str, state: str, tasks: str | None) -> None:
        ranges = parse_task_ranges(tasks) if tasks is not None and tasks.strip() else None
        self.entries.setdefault(number, []).append((name, state, ranges))

    def find(self, jid: Any) -> tuple[str, str] | None:
        """(name, state) of the job or member ``jid``, None when not listed. A
        plain id stands for the whole job, its most advanced entry (one with a
        slot) first."""
        number, task = split_jid(jid)
        found = None
        for name, state, ranges in self.entries.get(number, ()):
            if task is not None and (ranges is None or not _in_ranges(task, ranges)):
                continue
            if found is None or (set(state) & _RUNNING_LETTERS and not set(found[1]) & _RUNNING_LETTERS):
                found = (name, state)
        return found

    def numbers_named(self, name: str) -> list[str]:
        return [number for number, entries in self.entries.items() if any(e[0] == name for e in entries)]

    def names(self) -> dict[str, str]:
        """{job number: name} of everything listed."""
        return {number: entries[0][0] for number, entries in self.entries.items()}


def _directive_value(value: Any, key: str) -> str:
    """A user's directive value, written as given: qsub splits a ``#$`` line
    on white space like a command line, so ``pe="smp 4"`` is ``-pe smp 4`` and
    ``v='A="x y"'`` keeps its quotes. Only a line break (it would end the
    comment and start a script line) or NUL is refused."""
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"Grid Engine directive -{key}: a value cannot hold a line break: {text!r}")
    return text


def _directive_path(path: Any, key: str) -> str:
    """A path xqute puts in a directive (``-o``, ``-e``, ``-wd``): one argument,
    so double-quoted when it has white space in it."""
    text = str(path)
    if "\n" in text or "\r" in text or "\0" in text or '"' in text:
        raise ValueError(
            f"Grid Engine directive -{key}: qsub cannot take a path with a line break "
            f"or a double quote in it: {text!r}"
        )
    return f'"{text}"' if re.search(r"\s", text) else text


def _flag(key: Any) -> str:
    """``-l`` for ``l`` (or ``-l``)."""
    if not _KEY_RE.fullmatch(str(key)):
        raise ValueError(
            f"Invalid Grid Engine option {key!r}: expected a qsub flag name such as 'l' or 'pe'"
        )
    return "-" + str(key).lstrip("-")


def _with_value(flag: str, value: Any) -> str:
    """``-l h_rt=60``; a path option's value quoted as one argument."""
    key = flag[1:]
    render = _directive_path if key in _PATH_OPTIONS else _directive_value
    return f"{flag} {render(value, key)}"


def _parse_qacct(text: str) -> dict[str, dict[str, str]]:
    """qacct -j output as {job number: {field: value}} (the last record wins:
    a rescheduled job has one record per run). An array task's record is also
    under ``<job number>.<task id>`` (its ``taskid`` field)."""
    records: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}

    def keep() -> None:
        if "jobnumber" in current:
            records[current["jobnumber"]] = current
            task = current.get("taskid", "")
            if task.isdigit():
                records[f"{current['jobnumber']}.{task}"] = current

    for line in text.splitlines():
        if line.startswith("====="):
            keep()
            current = {}
            continue
        key, _, value = line.partition(" ")
        if key:
            current[key] = value.strip()
    keep()
    return records


def _parse_error_reasons(text: str, by_task: bool = False) -> dict[str, str]:
    """``qstat -j ID,ID`` output as {job number: its error reason lines}; with
    ``by_task`` also {``<job number>.<task id>``: that task's lines} (the
    number after ``error reason`` is the task id)."""
    reasons: dict[str, list[str]] = {}
    jid = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "job_number":
            jid = value.strip()
            reasons.setdefault(jid, [])
        elif jid is not None and key.startswith("error reason") and value.strip():
            reasons[jid].append(value.strip())
            task = key[len("error reason"):].strip()
            if by_task and task.isdigit():
                reasons.setdefault(f"{jid}.{task}", []).append(value.strip())
    return {jid: "; ".join(lines) for jid, lines in reasons.items() if lines}


def parse_sge_memory(text: Any) -> float | None:
    """A Grid Engine memory value (``200M``, ``1.5G``, ``4.746MB``, ``512``)
    in bytes; None when it is none of these."""
    match = _SGE_MEMORY_RE.fullmatch(str(text or "").strip())
    if match is None:
        return None
    return float(match.group(1)) * _SGE_MEMORY_UNITS[match.group(2)]


def parse_sge_seconds(text: Any) -> float | None:
    """A Grid Engine time (``65``, ``1.654s``, ``0:1:5``, ``01:00:05``) in
    seconds; None when it is none of these."""
    value = str(text or "").strip()
    if value.endswith("s"):
        value = value[:-1]
    parts = value.split(":")
    if not value or len(parts) > 3:
        return None
    try:
        numbers = [float(part) if part else 0.0 for part in parts]
    except ValueError:
        return None
    seconds = 0.0
    for number in numbers:
        seconds = seconds * 60 + number
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def format_h_rt(seconds: int) -> str:
    """``h_rt`` as ``HH:MM:SS`` (hours past 99 as they are: Grid Engine has no
    days field)."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def request_names(values: Any) -> dict[str, str]:
    """``-l`` values (one, or a list: ``"h_rt=60,h_vmem=1G"``) as {resource
    name: value}; the shortcut ``h`` is named ``hostname``."""
    found: dict[str, str] = {}
    for value in values if isinstance(values, (list, tuple)) else (values,):
        if value in (None, False, True):
            continue
        for item in str(value).split(","):
            name, _, given = item.strip().partition("=")
            name = name.strip()
            if name:
                found["hostname" if name == "h" else name] = given.strip()
    return found


def category_limits(category: str) -> dict[str, str]:
    """The ``-l`` requests in qacct's ``category`` field (``-l
    h_rt=3,h_vmem=300M -pe smp 2``) as {name: value}."""
    words = str(category or "").split()
    found: dict[str, str] = {}
    for flag, value in zip(words, words[1:]):
        if flag == "-l":
            found.update(request_names(value))
    return found


def _record_int(record: dict[str, str], key: str) -> int | None:
    word = (record.get(key) or "").split(" ")[0].strip()
    return int(word) if word.lstrip("-").isdigit() else None


def limit_cause(record: dict[str, str]) -> str:
    """How a job qacct recorded ended when Grid Engine killed it (qacct's
    ``failed`` 37, or exit status 137): ``oom`` when its peak virtual memory
    (``maxvmem``) reached its ``h_vmem`` (per slot, times its slots),
    ``timeout`` when its wall clock reached its ``h_rt`` (or its CPU time
    its ``h_cpu``), ``killed`` for another kill; "" when it was not killed."""
    failed = (record.get("failed") or "").split(":")[0].strip()
    exit_status = _record_int(record, "exit_status")
    if failed != _LIMIT_FAILED and exit_status != 137:
        return ""
    limits = category_limits(record.get("category", ""))
    slots = _record_int(record, "slots") or 1
    vmem_limit = parse_sge_memory(limits.get("h_vmem"))
    maxvmem = parse_sge_memory(record.get("maxvmem"))
    if vmem_limit and maxvmem and maxvmem >= _VMEM_NEAR_LIMIT * vmem_limit * slots:
        return "oom"
    for limit_key, used_key in (("h_rt", "ru_wallclock"), ("h_cpu", "cpu")):
        limit = parse_sge_seconds(limits.get(limit_key))
        used = parse_sge_seconds(record.get(used_key))
        # ru_wallclock is whole seconds: a kill at the limit may show one less
        if limit and used is not None and used >= limit - 1:
            return "timeout"
    if failed == _LIMIT_FAILED:
        # one limit asked for: that is the one enforced
        asked = [key for key in ("h_vmem", "h_rt", "h_cpu") if key in limits]
        if asked == ["h_vmem"]:
            return "oom"
        if asked and "h_vmem" not in asked:
            return "timeout"
    return "killed"


def usage_figures(record: dict[str, str], full: bool) -> dict[str, Any]:
    """Usage figures of one qacct record, for the usage record: peak memory
    (``ru_maxrss``; for a job killed by a signal, whose killed processes
    rusage misses, ``maxvmem`` when that is higher), CPU time (``cpu``), host
    (``hostname``), the peak virtual memory (``maxvmem``, as
    ``peak_vmem_mb``) and, when ``full``, the wall time (``ru_wallclock``).
    qacct 8.1.9 prints ``ru_maxrss`` (kilobytes) as if bytes ("207.934KB"
    for 207934 KB); other versions print the kilobytes as a plain number:
    either way the number read is kilobytes."""
    figures: dict[str, Any] = {}
    sources: dict[str, str] = {}
    rss_kb = parse_sge_memory(record.get("ru_maxrss"))
    vmem = parse_sge_memory(record.get("maxvmem"))
    vmem_mb = round(vmem / 1048576, 1) if vmem else None
    if rss_kb:
        figures["peak_memory_mb"] = round(rss_kb / 1024, 1)
        sources["peak_memory_mb"] = "qacct ru_maxrss"
    signalled = (_record_int(record, "exit_status") or 0) > 128
    if vmem_mb and signalled and vmem_mb > figures.get("peak_memory_mb", 0):
        figures["peak_memory_mb"] = vmem_mb
        sources["peak_memory_mb"] = "qacct maxvmem"
    if vmem_mb:
        figures["peak_vmem_mb"] = vmem_mb
        sources["peak_vmem_mb"] = "qacct maxvmem"
    cpu = parse_sge_seconds(record.get("cpu"))
    if cpu is not None:
        figures["cpu_s"] = round(cpu, 3)
        sources["cpu_s"] = "qacct cpu"
    host = (record.get("hostname") or "").strip()
    if host and host not in ("-", "NONE", "UNKNOWN"):
        figures["host"] = host
        sources["host"] = "qacct hostname"
    if full:
        wall = parse_sge_seconds(record.get("ru_wallclock"))
        if wall is not None:
            figures["wall_s"] = wall
            sources["wall_s"] = "qacct ru_wallclock"
    figures["sources"] = sources
    return figures


class SgeScheduler(Scheduler):
    """Submit jobs to Grid Engine with ``qsub``.

    Args:
        qsub, qstat, qdel, qacct, qconf: the Grid Engine commands (names on
            PATH or paths; ``qconf`` only reads ``max_aj_tasks``).
        qacct_wait: seconds to keep looking in ``qacct`` for a job that left
            ``qstat`` without writing its return code (accounting can lag
            behind by its ``flush_time``) before failing it without a reason
            (the base class's ``end_grace``; 20). Grid Engine is asked at most
            every ``query_interval`` seconds (5), ``qstat`` and, while such a
            job waits, ``qacct``: one call each per round.
        kill_wait: seconds ``kill_jobs`` waits for deleted jobs to leave
            ``qstat``, so nothing is left running when a run ends.
        command_timeout: seconds any one Grid Engine command may take.
        pe_name: the parallel environment ``resources``' cpus are asked in
            (``-pe <pe_name> <cpus>``; ``smp``). It must allocate all slots on
            one host (``allocation_rule $pe_slots``).
        **kwargs: the base Scheduler's options (``array=False``: one ``qsub``
            per job); every other key becomes a ``#$`` directive: ``True`` a
            bare flag (``notify=True`` -> ``#$ -notify``), a list repeats the
            flag (``l=["h_rt=60", "h_vmem=1G"]``), anything else ``-key
            value``; ``None``/``False`` leave the flag out. ``N``, ``o``,
            ``e``, ``S``, ``wd``/``cwd`` replace the ones xqute sets.

    ``resources``: cpus -> ``-pe <pe_name> <cpus>``; memory -> ``-l
    h_vmem=<memory / cpus>M`` (per slot, rounded up: Grid Engine multiplies it
    by the slots); time -> ``-l h_rt=HH:MM:SS``; the nodes a retry excludes
    after a node failure -> ``-l hostname=!a&!b``. gpus are refused (Grid
    Engine has no standard GPU resource: ask your site's with ``l="gpu=1"``).
    A raw option for the same thing (``pe``, or ``l`` naming ``h_vmem``,
    ``h_rt``, ``h``/``hostname``) wins, with one warning.

    Jobs are named ``<prefix>-<short hash of workdir>-<index>``; ``-wd`` is the
    scheduler's ``cwd`` when given, else ``-cwd``; Grid Engine's own output
    files (anything the wrapper prints outside the command) go into the job's
    metadir as ``job.sge.stdout`` / ``job.sge.stderr``.

    Arrays: a burst of jobs is submitted as one array job (``submit_array``);
    the member that is task ``T`` of Grid Engine job ``N`` has the job id
    ``N.T`` (``"123.5"``), written to its ``job.jid`` like any id.
    ``submit_calls`` and ``kill_calls`` count the ``qsub`` and ``qdel`` calls.
    """

    name = "sge"
    default_query_interval = 5.0
    default_end_grace = 20.0
    required_binaries = ("qsub", "qstat", "qdel")
    # qdel SIGKILLs the job's process group (unless the cluster enables
    # ENABLE_ADDGRP_KILL): the command must stay in the wrapper's group.
    wrapper_own_process_group = False
    # h_rt: Grid Engine kills a job at its time (the wrapper does not time it)
    time_enforced_by_scheduler = True
    # qacct's ru_maxrss, cpu, maxvmem, hostname
    usage_from_scheduler = True

    def __init__(
        self,
        *args: Any,
        qsub: str = "qsub",
        qstat: str = "qstat",
        qdel: str = "qdel",
        qacct: str = "qacct",
        qconf: str = "qconf",
        qacct_wait: float | None = None,
        kill_wait: float = 15.0,
        command_timeout: float = 60.0,
        pe_name: str = "smp",
        **kwargs: Any,
    ) -> None:
        if not isinstance(pe_name, str) or not _PE_NAME_RE.fullmatch(pe_name):
            raise ValueError(
                f"Invalid Grid Engine parallel environment name pe_name={pe_name!r}: "
                "one word of letters, digits and _ . - + (wildcards * ? [ ] allowed)"
            )
        if qacct_wait is not None:
            kwargs.setdefault("end_grace", qacct_wait)
        super().__init__(*args, **kwargs)
        self.qsub = str(qsub)
        self.qstat = str(qstat)
        self.qdel = str(qdel)
        self.qacct = str(qacct)
        self.qconf = str(qconf)
        self.qacct_wait = self.end_grace
        self.kill_wait = float(kill_wait)
        self.command_timeout = float(command_timeout)
        self.pe_name = pe_name
        if self.resources.gpus:
            raise ValueError(
                "resources: Grid Engine has no standard GPU resource, so gpus cannot be "
                "mapped; ask for your site's own (say l='gpu=1') and leave gpus out"
            )
        self.user = getpass.getuser()
        name = self._user_name
        if name is not None and _BAD_NAME_CHARS.search(name):
            raise ValueError(
                f"Invalid Grid Engine job name {name!r}: it may not contain "
                "spaces or any of / : @ \\ * ?"
            )
        # Render the directives once now, so a bad key or value is refused at
        # set-up (they are rendered again per job: clients may change ``config``).
        self._render_user_directives()
        # how many times qsub and qdel were called
        self.submit_calls = 0
        self.kill_calls = 0
        # max_aj_tasks, read once
        self._max_array_size: int | None = None
        # the arrays this scheduler submitted (or found after a lost reply):
        # job number -> {task id: member}, and job number -> array name
        self._arrays: dict[str, dict[int, Job]] = {}
        self._array_names: dict[str, str] = {}
        # array name -> its script's text (read back to find a member)
        self._scripts: dict[str, str] = {}
        # while adopting jobs an earlier manager left: one qstat listing for
        # all the jobs looked for by name (see _listing_for_find)
        self._adoption_listing: QstatListing | None = None
        self._adopting = False
        # jid -> usage figures of a trial qacct answered for while the status
        # round explained its end, until its usage record takes them
        self._ended_figures: dict[str, dict[str, Any]] = {}
        # jids of trials that ended without the wrapper's record and wait for
        # qacct: their usage record takes its wall time too
        self._vanished: set[str] = set()

    @property
    def _user_name(self) -> str | None:
        """The job name the user chose for all jobs (``N``), if any."""
        return next(
            (str(v) for k, v in self.config.items()
             if str(k).lstrip("-") == "N" and v not in (None, False, True)),
            None,
        )

    # ------------------------------------------------------------ set-up
    async def post_init(self) -> None:
        """Warn when ``qacct`` is missing (qsub, qstat and qdel are checked by
        the base class: ``required_binaries``)."""
        if shutil.which(self.qacct) is None:
            logger.warning(
                "sge scheduler: qacct %r was not found; jobs that vanish will be failed "
                "without Grid Engine's reason", self.qacct,
            )

    # ------------------------------------------------------------ the script
    def job_name(self, job: Job) -> str:
        """``<prefix>-<hash>-<index>`` with the characters Grid Engine refuses
        in names (``:``, ``/``, spaces, ...) replaced by ``_``."""
        return _BAD_NAME_CHARS.sub("_", super().job_name(job))

    def _render_user_directives(self) -> list[str]:
        """``#$`` lines for the user's options (rules: ``xqute.directives``)."""
        return render_directives("#$", self.config, _flag, _with_value)

    def _given(self, key: str) -> bool:
        return any(str(k).lstrip("-") == key for k, v in self.config.items() if v not in (None, False))

    def _user_requests(self) -> dict[str, str]:
        """The resources the user's raw ``-l`` options request, by name."""
        found: dict[str, str] = {}
        for key, value in self.config.items():
            if str(key).lstrip("-") == "l":
                found.update(request_names(value))
        return found

    def resource_directives(self, resources: Resources) -> list[str]:
        """``resources`` as ``#$`` lines: ``-pe <pe_name> <cpus>``, ``-l
        h_vmem=<per slot>M``, ``-l h_rt=HH:MM:SS``, ``-l hostname=!a&!b``. A
        raw option for the same thing wins (one warning per pair)."""
        if resources.gpus:
            raise ValueError("resources: Grid Engine cannot map gpus (see SgeScheduler)")
        requests = self._user_requests()
        lines = []
        slots = resources.cpus or 1
        if resources.cpus is not None:
            if self._given("pe"):
                self.raw_option_wins("cpus", "pe")
                raw = next(str(v) for k, v in self.config.items() if str(k).lstrip("-") == "pe")
                last = raw.split()[-1] if raw.split() else ""
                slots = int(last) if last.isdigit() and int(last) > 0 else 1
            else:
                lines.append(f"#$ -pe {self.pe_name} {resources.cpus}")
        if resources.memory_mb is not None:
            if "h_vmem" in requests:
                self.raw_option_wins("memory", "l h_vmem")
            else:
                lines.append(f"#$ -l h_vmem={math.ceil(resources.memory_mb / slots)}M")
        if resources.time_s is not None:
            if "h_rt" in requests:
                self.raw_option_wins("time", "l h_rt")
            else:
                lines.append(f"#$ -l h_rt={format_h_rt(resources.time_s)}")
        if resources.exclude_nodes:
            nodes = [node for node in resources.exclude_nodes if _HOST_RE.fullmatch(node)]
            if len(nodes) < len(resources.exclude_nodes):
                logger.warning(
                    "sge scheduler: not excluding nodes whose names a hostname request "
                    "cannot hold: %s", ", ".join(
                        repr(n) for n in resources.exclude_nodes if n not in nodes
                    ),
                )
            if "hostname" in requests:
                self.raw_option_wins("exclude_nodes", "l hostname")
            elif nodes:
                lines.append("#$ -l hostname=" + "&".join(f"!{node}" for node in nodes))
        return lines

    def _memory_limited(self, job: Job) -> bool:
        """Whether ``job``'s trial ran under a virtual memory limit."""
        requests = self._user_requests()
        return bool(job.resources.memory_mb) or "h_vmem" in requests or "s_vmem" in requests

    def _directives(
        self, name: str, stdout: Any, stderr: Any, resources: Resources | None = None
    ) -> list[str]:
        """xqute's ``#$`` lines (each unless the user gives that option), the
        ``resources``, then the user's."""
        lines = []
        if not self._given("N"):
            lines.append(f"#$ -N {name}")
        # the wrapper is bash whatever the queue's shell_start_mode says
        if not self._given("S"):
            lines.append(f"#$ -S {JOBCMD_WRAPPER_LANG}")
        if not (self._given("wd") or self._given("cwd")):
            if self.cwd:
                lines.append(f"#$ -wd {_directive_path(self.cwd, 'wd')}")
            else:
                lines.append("#$ -cwd")
        if not self._given("o"):
            lines.append(f"#$ -o {_directive_path(stdout, 'o')}")
        if not self._given("e"):
            lines.append(f"#$ -e {_directive_path(stderr, 'e')}")
        lines.extend(self.resource_directives(resources or Resources()))
        lines.extend(self._render_user_directives())
        return lines

    def jobcmd_shebang(self, job: Job) -> str:
        """The shebang, then xqute's directives, then the user's."""
        meta = job.metadir.mounted
        return "\n".join(
            [f"#!{JOBCMD_WRAPPER_LANG}",
             *self._directives(
                 self.job_name(job), meta / "job.sge.stdout", meta / "job.sge.stderr", job.resources
             )]
        )

    def array_folder(self, name: str) -> Any:
        """``<workdir>/.arrays/<name>``: the links of array ``name``'s tasks to
        their members' Grid Engine output files (its script is ``<name>.sh``
        beside it)."""
        return self.workdir / ARRAYS_DIR / name

    def array_script(self, jobs: Sequence[Job], name: str) -> str:
        """The script of array ``name``: the directives a single job gets
        (``-N name``; ``-o``/``-e`` through the task's link, ``$TASK_ID`` being
        Grid Engine's pseudo variable), then the dispatch that execs the
        member's own wrapper (``array_dispatch``; the exec keeps the process,
        so qdel's kill of the process group reaches the command)."""
        links = self.array_folder(name).mounted
        lines = [
            f"#!{JOBCMD_WRAPPER_LANG}",
            # members of one array ask for the same (the base groups them so)
            *self._directives(
                name, links / "$TASK_ID.stdout", links / "$TASK_ID.stderr", jobs[0].resources
            ),
        ]
        for line in lines:
            if not line.startswith("#") or "\r" in line or "\0" in line:
                raise ValueError(
                    f"Invalid scheduler option: the {self.name} directives of an array "
                    f"would hold a line that is not a directive: {line!r}"
                )
        indexes = ", ".join(str(job.index) for job in jobs)
        if len(indexes) > 200:
            indexes = f"{jobs[0].index} ... {jobs[-1].index}"
        lines.append(
            f"# Jobs {indexes} of an xqute run ({self.name} scheduler), task i is the "
            "i-th of them. Generated by xqute."
        )
        lines.append(self.array_dispatch(jobs, "SGE_TASK_ID", 1))
        return "\n".join(lines) + "\n"

    def _link_outputs(self, jobs: Sequence[Job], name: str) -> None:
        """Make the array's folder of links: ``<task>.stdout`` and
        ``<task>.stderr`` point at the member's ``job.sge.stdout`` /
        ``job.sge.stderr`` (as jobs see them), so Grid Engine writes each
        task's output into its member's metadir, as for a single job."""
        folder = self.array_folder(name)
        if not isinstance(folder, LocalPath):
            return
        os.makedirs(folder, exist_ok=True)
        kinds = [kind for kind, key in (("stdout", "o"), ("stderr", "e")) if not self._given(key)]
        for task, job in enumerate(jobs, start=1):
            for kind in kinds:
                link = os.path.join(folder, f"{task}.{kind}")
                target = str(job.metadir.mounted / f"job.sge.{kind}")
                try:
                    if os.readlink(link) == target:
                        continue
                except OSError:
                    pass
                tmp = f"{link}.{os.getpid()}.tmp"
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                os.symlink(target, tmp)
                os.replace(tmp, link)

    # ------------------------------------------------------------ submitting
    async def submit_job(self, job: Job) -> str:
        script = await self.wrapped_job_script(job)
        # the job's folder is set by -wd/-cwd in the script, not by qsub's cwd
        return await self._qsub(str(script))

    async def _qsub(self, *args: str) -> str:
        """``qsub -terse *args``; the job number it prints."""
        self.submit_calls += 1
        result = await run_command(self.qsub, "-terse", *args, timeout=self.command_timeout)
        if result.ok:
            for token in result.stdout.split():
                match = _JOB_NUMBER_RE.match(token)
                if match:
                    return match.group(0)
            raise SubmissionError(
                f"{self.qsub} printed no job id: {result.stdout.strip() or '(nothing)'}"
                f"{' / ' + result.stderr.strip() if result.stderr.strip() else ''}"
            )
        message = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.rc}")
        message = " ".join(line for line in message.splitlines() if line.strip() != "Exiting.")
        if result.rc == 127:
            raise SubmissionError(f"{self.qsub} not found ({message})")
        if result.rc == -1:
            # it may have reached qmaster before the timeout (see find_submitted)
            raise SubmissionError(f"{self.qsub} {message}", transient=True, ambiguous=True)
        raise SubmissionError(f"{self.qsub}: {message}", transient=bool(_TRANSIENT_RE.search(message)))

    async def max_array_size(self) -> int:
        """``max_aj_tasks`` from ``qconf -sconf``, read once (0, no limit, and
        an unreadable value give ``UNLIMITED_ARRAY_SIZE``, 75000)."""
        if self._max_array_size is None:
            size = None
            result = await run_command(self.qconf, "-sconf", timeout=self.command_timeout)
            if result.ok:
                match = re.search(r"^max_aj_tasks\s+([0-9]+)\s*$", result.stdout, re.M)
                if match:
                    size = int(match.group(1)) or UNLIMITED_ARRAY_SIZE
            if size is None:
                logger.debug(
                    "sge scheduler: no max_aj_tasks from %s -sconf (rc %s: %s); using %s",
                    self.qconf, result.rc, (result.stderr or result.stdout).strip()[:200],
                    UNLIMITED_ARRAY_SIZE,
                )
                size = UNLIMITED_ARRAY_SIZE
            self._max_array_size = size
        return self._max_array_size

    async def submit_array(self, jobs: Sequence[Job], throttle: int) -> list[str]:
        """Submit ``jobs`` as one array job: ``qsub -terse -t 1-<n> -tc
        <throttle> <workdir>/.arrays/<array name>.sh``. Member ``i`` (from 0)
        is task ``i + 1``; its job id is ``<job number>.<task id>``."""
        name = self.array_name(jobs)
        await asyncio.gather(*(self.wrapped_job_script(job) for job in jobs))
        text = self.array_script(jobs, name)
        script = self.workdir / ARRAYS_DIR / f"{name}.sh"
        if isinstance(script, LocalPath):
            await asyncio.to_thread(self._link_outputs, jobs, name)
        await write_meta(script, text)
        number = await self._qsub(
            "-t", f"1-{len(jobs)}", "-tc", str(max(1, int(throttle))), str(script)
        )
        self._remember_array(number, name, jobs)
        return [f"{number}.{task}" for task in range(1, len(jobs) + 1)]

    def _remember_array(self, number: str, name: str, jobs: Sequence[Job]) -> None:
        self._arrays[number] = dict(enumerate(jobs, start=1))
        self._array_names[number] = name

    # ------------------------------------------------- lost replies, adoption
    async def find_submitted(self, job: Job, ran: bool) -> str | None:
        """The Grid Engine job of ``job``'s name that ``qstat`` lists; when its
        wrapper has run, the latest of that name in ``qacct``. Not found so, a
        listed array task of this workdir that runs ``job``'s wrapper (a
        manager killed between an array's qsub and its members' jid files)."""
        # (with a user-chosen -N all jobs share it: then nothing is found, and
        # the job is submitted again rather than mistaken for another)
        name = self.job_name(job)
        listing = await self._listing_for_find()
        jid = None
        if listing is not None:
            numbers = listing.numbers_named(name)
            jid = max(numbers, key=int) if numbers else None
            if jid is None and not self._user_name:
                jid = await self._find_member(job, listing)
        if jid is None and ran:
            jid = await self._find_in_accounting(name)
        return jid

    async def find_submitted_array(self, jobs: Sequence[Job], ran: bool) -> list[str] | None:
        """After a lost qsub reply: the members' ids of the array named
        ``array_name(jobs)`` that ``qstat`` lists (or, when a member has run,
        that ``qacct`` knows), else None."""
        if self._user_name:  # every array has the user's name: cannot tell
            return None
        name = self.array_name(jobs)
        listing = await self._listing_for_find()
        number = None
        if listing is not None:
            numbers = listing.numbers_named(name)
            number = max(numbers, key=int) if numbers else None
        if number is None and ran:
            number = await self._find_in_accounting(name)
        if number is None:
            return None
        self._remember_array(number, name, jobs)
        return [f"{number}.{task}" for task in range(1, len(jobs) + 1)]

    async def adopt_left_running(self, jobs: Sequence[Job]) -> list[Job]:
        """The base class's adoption; the jobs it looks for by name (those
        without a jid file) are all looked for in one qstat listing."""
        self._adopting = True
        try:
            return await super().adopt_left_running(jobs)
        finally:
            self._adopting = False
            self._adoption_listing = None

    async def _listing_for_find(self) -> QstatListing | None:
        """A qstat listing to look for a lost submission in: a new one, but
        during an adoption (no qsub runs then) one for all the jobs."""
        if self._adopting and self._adoption_listing is not None:
            return self._adoption_listing
        listing = await self._qstat_listing()
        if self._adopting:
            self._adoption_listing = listing
        return listing

    async def _find_member(self, job: Job, listing: QstatListing) -> str | None:
        """``<number>.<task>`` of a listed array of this workdir whose script
        dispatches task ``task`` to ``job``'s wrapper (``dispatched_task``),
        while Grid Engine still lists that task."""
        for number, name in sorted(listing.names().items(), key=lambda item: -int(item[0])):
            first = self._array_first_index(name)
            if first is None or first > job.index:
                continue
            if name not in self._scripts:
                self._scripts[name] = await read_meta(self.workdir / ARRAYS_DIR / f"{name}.sh") or ""
            task = self.dispatched_task(self._scripts[name], job)
            if task is not None and listing.find(f"{number}.{task}") is not None:
                return f"{number}.{task}"
        return None

    def _array_first_index(self, name: str) -> int | None:
        """The first member's index when ``name`` is an array name of this
        workdir (``<prefix>-<hash>-<first index>-a<hash>``), else None."""
        base = re.escape(self.job_name(_IndexOnly(0)).rsplit("-", 1)[0])  # type: ignore[arg-type]
        match = re.fullmatch(base + r"-([0-9]+)-a[0-9a-f]{6}", name)
        return int(match.group(1)) if match else None

    async def _find_in_accounting(self, name: str) -> str | None:
        """The latest finished job named ``name``, from qacct."""
        if shutil.which(self.qacct) is None:
            return None
        result = await run_command(self.qacct, "-j", name, timeout=self.command_timeout)
        if not result.ok:
            return None
        numbers = [jid for jid in _parse_qacct(result.stdout) if _JOB_NUMBER_RE.fullmatch(jid)]
        return max(numbers, key=int) if numbers else None

    # ------------------------------------------------------------ asking
    async def _qstat_listing(self) -> QstatListing | None:
        """This user's jobs from one ``qstat -xml`` call; None when qstat
        failed (then nothing is concluded this round)."""
        result = await run_command(
            self.qstat, "-xml", "-u", self.user, timeout=self.command_timeout
        )
        if not result.ok:
            logger.warning(
                "sge scheduler: %s failed (rc %s): %s", self.qstat, result.rc,
                result.stderr.strip() or result.stdout.strip(),
            )
            return None
        try:
            root = ET.fromstring(result.stdout)
        except ET.ParseError as exc:
            logger.warning("sge scheduler: cannot parse %s -xml output: %s", self.qstat, exc)
            return None
        if root.tag != "job_info":
            # well-formed but not qstat's answer: it says nothing about our jobs
            logger.warning(
                "sge scheduler: %s -xml printed <%s>, not <job_info>: %r",
                self.qstat, root.tag, result.stdout[:200],
            )
            return None
        listing = QstatListing()
        for entry in root.iter("job_list"):
            number = (entry.findtext("JB_job_number") or "").strip()
            if not number:
                continue
            listing.add(
                number,
                (entry.findtext("JB_name") or "").strip(),
                (entry.findtext("state") or "").strip(),
                entry.findtext("tasks"),
            )
        return listing

    async def query_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobQuery]:
        """One ``qstat -xml`` for all ``jobs`` (array members found in their
        array's task ranges); ``qstat -j`` only for jobs in an error state and
        ``qacct`` only for jobs that vanished without an rc file."""
        answers, _ = await self.query_jobs_and_usage(jobs, ())
        return answers

    async def query_jobs_and_usage(
        self, jobs: Sequence[Job], ended: Sequence[str]
    ) -> tuple[dict[Job, JobQuery], dict[str, dict[str, Any]]]:
        """A status round: one ``qstat -xml`` for the live ``jobs``, then ONE
        ``qacct`` call for both the jobs that left qstat without an rc file
        and the ended trials ``ended`` that wait for their usage figures."""
        answers: dict[Job, JobQuery] = {}
        vanished: list[Job] = []
        asked = [job for job in jobs if job.jid]
        if asked:
            listed = await self._listed_answers(asked)
            if listed is not None:
                answers, vanished = listed
        unexplained = []
        for job in vanished:
            if await job.read_rc_file() is not None:
                answers[job] = JobQuery(JobQuery.ENDED)
            else:
                unexplained.append(job)
        due = [str(jid) for jid in ended] if self.usage else []
        if not unexplained and not due:
            return answers, {}
        records = await self._accounting([str(job.jid) for job in unexplained] + due)
        answers.update(self._explain_vanished(unexplained, records))
        return answers, self._usage_of(due, records)

    async def query_usage(self, jids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """qacct's figures for the ended trials ``jids``, in one call (by the
        job number when they share one, else by this workdir's job names).
        Trials qacct has no record of yet are left out, to be asked again."""
        if not self.usage or not jids:
            return {}
        records = await self._accounting([str(jid) for jid in jids])
        return self._usage_of([str(jid) for jid in jids], records)

    def _usage_of(
        self, jids: Sequence[str], records: dict[str, dict[str, str]]
    ) -> dict[str, dict[str, Any]]:
        usage = {}
        for jid in jids:
            record = records.get(jid)
            if record is not None and self._name_of_workdir(record.get("jobname", "")):
                usage[jid] = usage_figures(record, full=jid in self._vanished)
                self._vanished.discard(jid)
        return usage

    def _name_of_workdir(self, name: str) -> bool:
        """Whether ``name`` is a job name this workdir's jobs and arrays get."""
        if self._user_name:
            return name == self._user_name
        return name.startswith(self._name_base() + "-")

    def _name_base(self) -> str:
        """``<prefix>-<hash of workdir>``: what all this workdir's names begin with."""
        return self.job_name(_IndexOnly(0)).rsplit("-", 1)[0]  # type: ignore[arg-type]

    def job_usage(self, job: Job) -> dict[str, Any]:
        """qacct's figures for a trial that ended without its wrapper's record
        (killed by Grid Engine over a limit), fetched by the status round that
        explained its end: all of them, wall time too (but for a trial whose
        wrapper did record its end: its own wall time, to the millisecond, is
        kept)."""
        jid = str(job.jid or "")
        figures = self._ended_figures.pop(jid, {})
        if not figures and jid and job._rc == RC_VANISHED:
            self._vanished.add(jid)
        if figures and job._rc != RC_VANISHED:
            figures = {key: value for key, value in figures.items() if key != "wall_s"}
            figures["sources"] = {k: v for k, v in figures["sources"].items() if k != "wall_s"}
        return figures

    async def exit_cause(self, job: Job, rc: int) -> str:
        """The base's reading of ``rc``; a command that failed under a
        virtual memory limit (``h_vmem``, from ``resources``' memory or a raw
        option) and said its allocation was refused (Python's MemoryError,
        "Cannot allocate memory", ``std::bad_alloc``, "out of memory" in the
        last 4 KB of its stderr) is ``oom``: h_vmem is a setrlimit, the
        program sees the refusal and ends itself. Trials Grid Engine killed
        get their cause from qacct (``limit_cause``) when they vanish."""
        cause = await super().exit_cause(job, rc)
        if cause in ("ok", "timeout") or rc in (RC_VANISHED, RC_SUBMISSION_FAILED):
            return cause
        if not self._memory_limited(job):
            return cause
        try:
            tail = await asyncio.to_thread(_tail, str(job.stderr_file))
        except OSError:
            return cause
        return "oom" if _MEMORY_STDERR_RE.search(tail) else cause

    async def _listed_answers(
        self, asked: Sequence[Job]
    ) -> tuple[dict[Job, JobQuery], list[Job]] | None:
        """What one qstat listing says of ``asked``: answers for the listed
        ones (qstat -j for those in an error state), and the jobs it no longer
        lists. None when qstat failed."""
        listing = await self._qstat_listing()
        if listing is None:
            return None
        answers: dict[Job, JobQuery] = {}
        in_error: list[Job] = []
        vanished: list[Job] = []
        for job in asked:
            entry = listing.find(job.jid)
            if entry is None or not self._is_ours(job, entry[0]):
                vanished.append(job)
                continue
            state = entry[1]
            if "E" in state:
                in_error.append(job)
            elif set(state) & _RUNNING_LETTERS:
                answers[job] = JobQuery(JobQuery.RUNNING)
            else:
                answers[job] = JobQuery(JobQuery.PENDING)
        if in_error:
            answers.update(await self._error_answers(in_error))
        return answers, vanished

    def _is_ours(self, job: Job, name: str) -> bool:
        """Job numbers restart when a cluster is re-created: a number is only
        taken as this job's when the name matches too. A member's array is
        known by its name when this scheduler submitted it; one an earlier
        manager submitted (adopted) by having a name of this workdir's arrays
        that begins at or before the member."""
        if self._user_name:
            return name == self._user_name
        number, task = split_jid(job.jid)
        if task is None:
            return name == self.job_name(job)
        known = self._array_names.get(number)
        if known is not None:
            return name == known
        first = self._array_first_index(name)
        return first is not None and first <= job.index

    async def _error_answers(self, jobs: list[Job]) -> dict[Job, JobQuery]:
        numbers = sorted({split_jid(job.jid)[0] for job in jobs}, key=int)
        result = await run_command(self.qstat, "-j", ",".join(numbers), timeout=self.command_timeout)
        reasons = _parse_error_reasons(result.stdout, by_task=True) if result.ok else {}
        answers = {}
        for job in jobs:
            jid: str = job.jid  # type: ignore[assignment]
            reason = reasons.get(jid) or reasons.get(split_jid(jid)[0])
            answers[job] = JobQuery(
                JobQuery.ERROR,
                f"Grid Engine put job {jid} in an error state (Eqw)"
                + (f": {reason}" if reason else ""),
            )
        return answers

    def _explain_vanished(
        self, jobs: list[Job], records: dict[str, dict[str, str]]
    ) -> dict[Job, JobQuery]:
        """Jobs Grid Engine no longer lists and that wrote no rc file: ended.
        The reason is qacct's when it has a record (and with it the cause:
        ``limit_cause``, and the trial's usage figures); accounting can lag,
        so the base class keeps asking (each query round) for ``end_grace``
        seconds before taking "no record"."""
        answers: dict[Job, JobQuery] = {}
        for job in jobs:
            jid: str = job.jid  # type: ignore[assignment]
            record = records.get(jid)
            if record is not None and "jobname" in record and not self._is_ours(job, record["jobname"]):
                record = None  # a job of an earlier cluster with the same number
            if record is not None:
                if self.usage:
                    self._ended_figures[jid] = usage_figures(record, full=True)
                answers[job] = JobQuery(
                    JobQuery.ENDED, self._accounting_reason(jid, record), cause=limit_cause(record)
                )
            else:
                self._ended_figures.pop(jid, None)
                answers[job] = JobQuery(
                    JobQuery.ENDED,
                    f"Grid Engine job {jid} is gone without recording its return code and "
                    f"{self.qacct} has no record of it (deleted before it started?)",
                )
        return answers

    async def _accounting(self, jids: list[str]) -> dict[str, dict[str, str]]:
        """qacct records of the jobs ``jids`` in one call: by number when they
        share one (with ``-t <tasks>`` for members of one array), else by the
        workdir's job-name pattern (qacct takes one -j)."""
        if not jids or shutil.which(self.qacct) is None:
            return {}
        ids = [split_jid(jid) for jid in jids]
        numbers = {number for number, _ in ids}
        if len(numbers) == 1:
            args = ["-j", numbers.pop()]
            tasks = sorted(task for _, task in ids if task is not None)
            if tasks and len(tasks) == len(ids):
                args += ["-t", str(tasks[0]) if tasks[0] == tasks[-1] else f"{tasks[0]}-{tasks[-1]}"]
        elif self._user_name:
            args = ["-j", self._user_name]
        else:
            # every default name of this workdir, jobs' and arrays': <prefix>-<hash>-*
            args = ["-j", self._name_base() + "-*"]
        result = await run_command(self.qacct, *args, timeout=self.command_timeout)
        if not result.ok:
            return {}
        return _parse_qacct(result.stdout)

    @staticmethod
    def _accounting_reason(jid: str, record: dict[str, str]) -> str:
        failed = record.get("failed", "?")
        exit_status = record.get("exit_status", "?")
        reason = (
            f"Grid Engine job {jid} ended without recording its return code "
            f"(qacct: exit_status {exit_status}, failed {failed})"
        )
        if failed.split(":")[0].strip() == _QDEL_FAILED:
            reason += "; it was most likely deleted with qdel"
        return reason

    # ------------------------------------------------------------ killing
    def _qdel_targets(self, jobs: Sequence[Job]) -> tuple[list[str], list[tuple[str, str]]]:
        """What to delete for ``jobs``: whole jobs (plain ids, and arrays this
        scheduler submitted whose every live member is among ``jobs``) and
        (job number, task range) pairs for the other members."""
        whole: list[str] = []
        members: dict[str, list[int]] = {}
        killing = {job.jid for job in jobs if job.jid}
        for jid in killing:
            number, task = split_jid(jid)
            if task is None:
                whole.append(number)
            else:
                members.setdefault(number, []).append(task)
        parts = []
        for number, tasks in members.items():
            array = self._arrays.get(number)
            if array is not None and all(
                f"{number}.{task}" in killing
                or member.jid != f"{number}.{task}"  # resubmitted since (a retry)
                or JobStatus.is_final(member._status)
                for task, member in array.items()
            ):
                whole.append(number)
                continue
            parts.extend((number, tasks_) for tasks_ in task_ranges(tasks))
        return sorted(set(whole), key=int), parts

    async def kill_jobs(self, jobs: Sequence[Job]) -> None:
        """``qdel`` all ``jobs`` in one call (a few for thousands): plain jobs
        and whole arrays by number, ``<number> -t <tasks>`` for members of an
        array whose other members go on; then wait up to ``kill_wait`` seconds
        for them to leave ``qstat``."""
        jids = [job.jid for job in jobs if job.jid]
        if not jids:
            return
        whole, parts = self._qdel_targets(jobs)
        # qdel takes ids and "<id> -t <tasks>" groups together: one call
        targets = [[number] for number in whole] + [[n, "-t", tasks] for n, tasks in parts]
        for chunk in chunks(targets, _QDEL_MAX_IDS):
            await self._qdel(*(arg for target in chunk for arg in target))
        deadline = time.monotonic() + self.kill_wait
        pending = set(jids)
        delay = 0.25
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            listing = await self._qstat_listing()
            if listing is not None:
                pending = {jid for jid in pending if listing.find(jid) is not None}
            delay = min(delay * 1.5, 2.0)
        if pending:
            logger.warning(
                "sge scheduler: jobs %s were still listed by %s %.0f s after qdel",
                ", ".join(sorted(pending)), self.qstat, self.kill_wait,
            )

    async def _qdel(self, *args: str) -> None:
        self.kill_calls += 1
        result = await run_command(self.qdel, *args, timeout=self.command_timeout)
        if not result.ok:
            # "does not exist" for jobs that ended meanwhile is expected
            other = [
                line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and "does not exist" not in line
                and "registered" not in line and "has deleted" not in line
            ]
            if other:
                logger.warning("sge scheduler: %s: %s", self.qdel, "; ".join(other))


def _tail(path: str, size: int = 4096) -> str:
    """The last ``size`` bytes of a local file, as text."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - size))
        return handle.read().decode(errors="replace")


class _IndexOnly:
    """Stands in for a job where only its index is read (``job_name``)."""

    def __init__(self, index: int) -> None:
        self.index = index
