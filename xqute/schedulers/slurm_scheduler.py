"""Run jobs on a Slurm cluster through ``sbatch``.

Being a good citizen of a shared cluster is the point of this backend:

- A job's state comes first from the files its wrapper writes into the metadir
  (the base class reads them every round). Slurm is asked only about the jobs
  whose files have not answered, in **one** ``squeue`` call for all of them, at
  most once every ``query_interval`` seconds, less often while its answers do
  not change. ``sacct`` is asked (again once for all) only about jobs that have
  left ``squeue`` without their files saying how they ended.
- A job that ends without its wrapper recording a return code (cancelled before
  it started, killed by the out-of-memory killer, lost with its node, ...) is
  failed with rc -3 and Slurm's own account of it in its stderr file.
- Transient ``sbatch`` refusals (a busy controller, a per-user submit limit) are
  retried with backoff by the base class; ``submit_rate`` caps submissions.
- Killing is one ``scancel`` call for many jobs.
- A burst of jobs goes out as one job array (``sbatch --array=0-<n-1>%<throttle>``;
  the base class gathers the burst and sets the throttle from ``forks``). Each
  member runs its own wrapper, picked by ``$SLURM_ARRAY_TASK_ID``; its job id is
  ``<array id>_<task id>``. Arrays are cut at the cluster's ``MaxArraySize``
  (read once from ``scontrol show config``). ``array: False`` submits one job
  per ``sbatch`` as before.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..defaults import JOBCMD_WRAPPER_LANG, JobStatus
from ..directives import render_directives
from ..job import Job
from ..resources import Resources
from ..scheduler import RC_VANISHED, JobQuery, Scheduler, SubmissionError
from ..utils import chunks, logger, one_line, run_command

# How Slurm's job states (squeue %T, sacct State) map onto xqute's view.
PENDING_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",  # nodes being readied: about to run
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESV_DEL_HOLD",
    }
)
RUNNING_STATES = frozenset(
    {
        "RUNNING",
        "COMPLETING",  # processes gone, epilog running: the files will answer
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "RESIZING",
    }
)
ENDED_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
    }
)
# How a job in these end states ended, as the usage record names it.
STATE_CAUSES = {
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "OUT_OF_MEMORY": "oom",
    "NODE_FAIL": "node_fail",
    "BOOT_FAIL": "node_fail",
    "PREEMPTED": "preempted",
    "CANCELLED": "cancelled",
    "REVOKED": "cancelled",
    "COMPLETED": "ok",
    "FAILED": "failed",
}
# What Slurm writes into a job's stderr when it ends the job (slurmstepd's
# "*** JOB 42 ON node CANCELLED AT ... DUE TO TIME LIMIT ***", and the memory
# enforcement of jobacct_gather: "Exceeded job memory limit"), and the cause.
_STDERR_CAUSES = (
    (re.compile(r"DUE TO TIME LIMIT"), "timeout"),
    (re.compile(r"Exceeded (?:job|step) memory limit|oom-kill|OUT_OF_MEMORY", re.IGNORECASE), "oom"),
    (re.compile(r"DUE TO NODE FAILURE"), "node_fail"),
    (re.compile(r"DUE TO PREEMPTION"), "preempted"),
    (re.compile(r"\*\*\* JOB [0-9_]+ ON \S+ CANCELLED AT"), "cancelled"),
)
# Held after a special exit: it stays in the queue until someone acts.
ERROR_STATES = frozenset({"SPECIAL_EXIT"})
# Pending reasons that never clear by themselves: the job would wait forever.
STUCK_PENDING_REASONS = frozenset({"DependencyNeverSatisfied", "BadConstraints"})

# sbatch errors worth retrying: the controller is busy or unreachable for now, or
# a per-user/group submit limit is full (it empties as jobs end).
_TRANSIENT_SBATCH_RE = re.compile(
    r"socket timed out|timed out|resource temporarily unavailable|temporarily unable"
    r"|try again|unable to contact slurm controller|connection refused"
    r"|connection reset|communication connection failure|slurm_persist_conn"
    r"|zero bytes were transmitted|max\w*submit|grp\w*submit",
    re.IGNORECASE,
)
# An sbatch attempt whose outcome is unknown: the job may exist all the same.
_AMBIGUOUS_SBATCH_RE = re.compile(r"timed out|connection reset|zero bytes", re.IGNORECASE)

# Matched whole and ASCII-only: "$" would let a trailing newline through (a key
# "p\n" ended its #SBATCH line), and \d takes other scripts' digits.
_JOB_ID_RE = re.compile(r"([0-9]+)(?:;\S+)?", re.ASCII)
_DIRECTIVE_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*", re.ASCII)
# A line of `squeue -o %i|%T|%r` (ids of array and het jobs too: 12_3, 12_[1-4%2],
# 12+0) and of `sacct -P -o JobID,State,ExitCode,Reason`: anything else means
# the command printed something xqute cannot read, which says nothing of the jobs.
_SQUEUE_LINE_RE = re.compile(r"[0-9]+(?:[_+][0-9\[\]%,-]+)?\|[A-Z_]+(?:\|.*)?", re.ASCII)
# sacct lists a job's steps too (no -X): 12.batch, 12_3.batch, 12.0, 12.extern.
_SACCT_LINE_RE = re.compile(
    r"[0-9][0-9_+\[\]%,-]*(?:\.[A-Za-z0-9_+-]+)?\|[A-Z_]*(?: .*)?\|[^|]*\|.*", re.ASCII
)
# What one sacct call asks: the state (as before) and the usage figures. MaxRSS
# is on the step lines (the batch step's is the job script's), TotalCPU and
# Elapsed on the job's line, NodeList the host, ReqMem the memory asked for.
SACCT_FIELDS = "JobID,State,ExitCode,Reason,MaxRSS,TotalCPU,Elapsed,NodeList,ReqMem"
# sacct sizes: 170008K, 1.50G, 300M (a bare number is bytes); ReqMem of older
# Slurm versions ends in n (per node) or c (per CPU)
_SACCT_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)([nc]?)", re.ASCII)
_SACCT_SIZE_MB = {"": 1 / 1048576, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1048576.0,
                  "P": 1073741824.0}
# sacct durations: [DD-][HH:]MM:SS[.mmm] (TotalCPU: 00:01.528; Elapsed: 1-02:03:04)
_SACCT_DURATION_RE = re.compile(
    r"(?:([0-9]+)-)?(?:([0-9]+):)?([0-9]+):([0-9]+(?:\.[0-9]+)?)", re.ASCII
)
# A job id missing this many rounds running from the sacct that answers a
# round (slurmdbd lags, or never had it) is put to squeue instead.
SACCT_MISSES = 3
# A pending array's compressed squeue/sacct id: 123_[5-99%8], 123_[1,3,5-7].
_ARRAY_RANGE_RE = re.compile(r"([0-9]+)_\[([0-9,%-]+)\]", re.ASCII)
# Slurm's default MaxArraySize, when scontrol cannot tell.
DEFAULT_MAX_ARRAY_SIZE = 1001
# scancel's complaints about jobs that ended meanwhile (nothing left to cancel)
_ALREADY_GONE_RE = re.compile(r"already complet|invalid job id|job has finished", re.IGNORECASE)
# what Slurm's commands put before each line of an error ("sbatch: error: "),
# left out of the one-line messages xqute logs and fails jobs with
_ERROR_PREFIX_RE = re.compile(r"\w+: error: ")
# values that need no quoting in an #SBATCH line
_PLAIN_VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:/=@+%-]+$")

# squeue --jobs takes one argument; past this many ids ask for all the user's jobs.
MAX_LISTED_IDS = 500
# Directives xqute sets itself, by their long names, and their one-letter aliases.
_OWN_DIRECTIVES = {"job-name": "J", "output": "o", "error": "e", "chdir": "D", "open-mode": None}


def format_directive_value(value: Any) -> str:
    """A value as Slurm's #SBATCH parser reads it back: plain, or double-quoted
    with backslash escapes (Slurm's parser undoes both)."""
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"A Slurm directive value cannot hold a line break or NUL: {text!r}")
    if _PLAIN_VALUE_RE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flag(raw_key: Any) -> str:
    """``-p`` for a one-letter key, ``--cpus-per-task`` for ``cpus_per_task``."""
    key = str(raw_key).replace("_", "-")
    if not _DIRECTIVE_KEY_RE.fullmatch(key):
        raise ValueError(f"Invalid Slurm option name {raw_key!r}")
    return f"-{key}" if len(key) == 1 else f"--{key}"


def _with_value(flag: str, value: Any) -> str:
    """``-p short``, ``--mem=4G``."""
    return f"{flag}{' ' if len(flag) == 2 else '='}{format_directive_value(value)}"


def directive_lines(options: dict[str, Any]) -> list[str]:
    """``#SBATCH`` lines for ``options``.

    ``_`` in a key becomes ``-``; a one-letter key gives ``-k value``, others
    ``--key=value``; ``True`` gives a bare flag; ``False``/``None`` leave the
    option out; a list or tuple repeats the option once per item (the last
    three are the rules of ``xqute.directives``, shared with Grid Engine).
    """
    return render_directives("#SBATCH", options, _flag, _with_value)


def _escape_filename_pattern(path: str) -> str:
    """Slurm expands ``%j`` and friends in --output/--error; keep ``%`` literal."""
    return path.replace("%", "%%")


def expand_job_ids(field: str) -> list[str]:
    """The job ids one squeue/sacct id field stands for: ``123_[5-7%2]`` is
    ``123_5 123_6 123_7`` (a pending array's tasks on one line); any other
    id (``123``, ``123_4``, ``12+0``) stands for itself."""
    match = _ARRAY_RANGE_RE.fullmatch(field)
    if match is None:
        return [field]
    base, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            continue
        ids.extend(f"{base}_{task}" for task in range(int(first), int(last or first) + 1))
    return ids


def array_id_of(jid: str) -> str:
    """``123`` for a member ``123_5``; a plain job id for itself."""
    return jid.partition("_")[0]


def parse_sacct_memory(text: str) -> float | None:
    """Megabytes from a size sacct prints (MaxRSS ``170008K``, ReqMem
    ``300M``, ``1.50G``; a bare number is bytes); None when empty, unreadable
    or per CPU (an old ReqMem's ``c`` suffix)."""
    match = _SACCT_SIZE_RE.fullmatch(text.strip())
    if match is None or match.group(3) == "c":
        return None
    return float(match.group(1)) * _SACCT_SIZE_MB[match.group(2)]


def parse_sacct_duration(text: str) -> float | None:
    """Seconds from a duration sacct prints: ``MM:SS.mmm``, ``HH:MM:SS``,
    ``D-HH:MM:SS`` (TotalCPU, Elapsed); None when empty or unreadable."""
    match = _SACCT_DURATION_RE.fullmatch(text.strip())
    if match is None:
        return None
    days, hours, minutes, seconds = match.groups()
    if days is not None and hours is None:  # D-HH:MM
        hours, minutes, seconds = minutes, seconds, "0"
    return ((int(days or 0) * 24 + int(hours or 0)) * 60 + int(minutes)) * 60 + float(seconds)


class SlurmScheduler(Scheduler):
    """Submit each job with ``sbatch`` to a Slurm cluster.

    Args:
        sbatch, squeue, scancel, sacct: paths of Slurm's commands (found on PATH
            by default). ``sacct`` is used only for jobs that left ``squeue``;
            without accounting they are resolved from their metadir alone.
        scontrol: path of ``scontrol``, kept for clients and tools; xqute does
            not need it.
        query_interval: seconds between two status calls to Slurm at least
            (5; paced by the base class). While Slurm's answers stay the same
            the gap grows by half each time, up to ``query_interval_max`` (60).
            Jobs whose files answer are not put to Slurm at all.
        end_grace: seconds a job's files get to show its end after Slurm says it
            ended (10); raise it on shared file systems that show new files late.
        command_timeout: seconds any one Slurm command may take (60).
        **kwargs: the base scheduler's options (``poll_interval``, ``submit_rate``,
            ``submit_retries``, ...); every other key becomes an ``#SBATCH``
            directive (``time="1:00:00"``, ``mem="4G"``, ``p="short"``, ...).
    """

    name = "slurm"
    default_query_interval = 5.0
    default_end_grace = 10.0
    required_binaries = ("sbatch", "squeue", "scancel")
    time_enforced_by_scheduler = True  # --time
    usage_from_scheduler = True  # sacct's MaxRSS, TotalCPU, NodeList

    def __init__(
        self,
        *args: Any,
        sbatch: str = "sbatch",
        squeue: str = "squeue",
        scancel: str = "scancel",
        sacct: str = "sacct",
        scontrol: str = "scontrol",
        command_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sbatch = sbatch
        self.squeue = squeue
        self.scancel = scancel
        self.sacct = sacct
        self.scontrol = scontrol
        if command_timeout <= 0:
            raise ValueError("command_timeout must be > 0")
        self.command_timeout = float(command_timeout)
        # checked now, so a bad option fails here rather than in every job
        directive_lines(dict(self.config))

        # the Slurm jobs still followed, by job id
        self._tracked: dict[str, _Tracked] = {}
        self._accounting: bool | None = None  # unknown until sacct is first needed
        self._warned_states: set[str] = set()
        # array id -> its members, as submitted by this manager (to cancel a
        # whole array in one call when all its live members go)
        self._arrays: dict[str, list[Job]] = {}
        self._max_array_size: int | None = None
        # jid -> usage figures of an ended job, from the sacct call of a status
        # round, until its usage record takes them (``job_usage``)
        self._ended_figures: dict[str, dict[str, Any]] = {}
        # jids of trials that ended without the wrapper's record: their usage
        # record takes all of sacct's figures (wall time and host too)
        self._vanished: set[str] = set()
        # jid -> rounds in a row that sacct answered without it
        self._sacct_misses: dict[str, int] = {}
        # counters, for benchmarks and tests
        self.status_calls = 0
        self.submit_calls = 0

    # --------------------------------------------------------------- set-up
    def jobcmd_shebang(self, job: Job) -> str:
        """The shebang and the ``#SBATCH`` directives: job name, Slurm's own
        output in the metadir, ``--chdir`` for ``cwd``, then the user's options."""
        meta = str(job.metadir.mounted)
        return self._script_head(
            self.job_name(job),
            _escape_filename_pattern(f"{meta}/job.stdout"),
            _escape_filename_pattern(f"{meta}/job.stderr"),
            job.resources,
        )

    def resource_directives(self, resources: Resources) -> dict[str, Any]:
        """``resources`` as #SBATCH options: ``--cpus-per-task``, ``--mem``
        (megabytes), ``--time`` (``[D-]HH:MM:SS``), ``--gres=gpu:N``, and
        ``--exclude=a,b`` for the nodes a retry keeps away from. A raw option
        the user gave for the same thing (by either of its names) wins, but
        for ``exclude``: the nodes of both are excluded."""
        user_keys = {str(key).replace("_", "-") for key in self.config}
        mapped: dict[str, tuple[str, Any, tuple[str, ...]]] = {
            "cpus": ("cpus-per-task", resources.cpus, ("cpus-per-task", "c")),
            "memory": (
                "mem",
                None if resources.memory_mb is None else f"{resources.memory_mb}M",
                ("mem", "mem-per-cpu", "mem-per-gpu"),
            ),
            "time": ("time", resources.clock, ("time", "t")),
            "gpus": (
                "gres", f"gpu:{resources.gpus}" if resources.gpus else None, ("gres", "gpus", "G"),
            ),
        }
        directives: dict[str, Any] = {}
        if resources.exclude_nodes:
            # nodes a retry keeps away from (a node failure): merged with the
            # user's own --exclude/-x in ``_script_head``, never overridden
            directives["exclude"] = ",".join(resources.exclude_nodes)
        for resource, (option, value, names) in mapped.items():
            if value is None:
                continue
            given = next((name for name in names if name in user_keys), None)
            if given is not None:
                self.raw_option_wins(resource, given)
                continue
            directives[option] = value
        return directives

    def _script_head(
        self, name: str, output: str, error: str, resources: Resources | None = None
    ) -> str:
        """Shebang and directives of a job or array script: xqute's own (those
        the user did not give), the ``resources``, then the user's options."""
        user_keys = {str(key).replace("_", "-") for key in self.config}
        own: dict[str, Any] = {
            "job-name": name,
            # Slurm's messages (a cancel, a time limit) land after the job's own
            # output; append mode keeps either side from overwriting the other
            "output": output,
            "error": error,
            "open-mode": "append",
        }
        if self.cwd:
            own["chdir"] = str(self.cwd)
        own = {
            key: value
            for key, value in own.items()
            if key not in user_keys and _OWN_DIRECTIVES.get(key) not in user_keys
        }
        mapped = self.resource_directives(resources or Resources())
        config = dict(self.config)
        if "exclude" in mapped:
            for key in [key for key in config if str(key).replace("_", "-") in ("exclude", "x")]:
                given = config.pop(key)
                if given not in (None, False, True):
                    nodes = [*str(given).split(","), *mapped["exclude"].split(",")]
                    mapped["exclude"] = ",".join(dict.fromkeys(n for n in nodes if n))
        lines = [
            f"#!{JOBCMD_WRAPPER_LANG}",
            *directive_lines(own),
            *directive_lines(mapped),
            *directive_lines(config),
        ]
        return "\n".join(lines)

    def wrapper_meta_functions(self, job: Job) -> str:
        """As the base's, but the job's output is appended to (Slurm writes to
        the same files; they are removed before each trial)."""
        return (
            super().wrapper_meta_functions(job)
            + '\n_xq_redirect() { exec >>"$_xq_meta/job.stdout" 2>>"$_xq_meta/job.stderr"; }'
        )

    # ------------------------------------------------------------ submitting
    async def submit_job(self, job: Job) -> str:
        """``sbatch --parsable`` the wrapper; returns Slurm's job id."""
        script = await self.wrapped_job_script(job)
        jid = await self._sbatch(str(script))
        self._tracked[jid] = _Tracked(job, "PENDING")
        return jid

    async def _sbatch(self, *args: str) -> str:
        """Run ``sbatch --parsable *args``; Slurm's job id, or SubmissionError."""
        self.submit_calls += 1
        result = await run_command(
            self.sbatch, "--parsable", *args, timeout=self.command_timeout
        )
        if result.rc == 127:
            raise SubmissionError(
                f"{result.stderr.strip()} (set the scheduler option sbatch= to its path)"
            )
        if not result.ok:
            message = (
                one_line(result.stderr or result.stdout, strip=_ERROR_PREFIX_RE)
                or f"sbatch exited {result.rc}"
            )
            transient = result.rc == -1 or bool(_TRANSIENT_SBATCH_RE.search(message))
            ambiguous = result.rc == -1 or bool(_AMBIGUOUS_SBATCH_RE.search(message))
            raise SubmissionError(message, transient=transient, ambiguous=ambiguous)
        # "123" or "123;cluster" (--parsable), or "Submitted batch job 123" from
        # an sbatch wrapper that drops --parsable: the id is the last word
        words = result.stdout.split()
        match = _JOB_ID_RE.fullmatch(words[-1]) if words else None
        if match is None:
            raise SubmissionError(
                f"sbatch succeeded but printed no job id: {result.stdout.strip()[:200]!r}"
            )
        return match.group(1)

    async def max_array_size(self) -> int:
        """Slurm's ``MaxArraySize`` (task ids run from 0 to one less), read
        once from ``scontrol show config``."""
        if self._max_array_size is None:
            size = DEFAULT_MAX_ARRAY_SIZE
            result = await run_command(self.scontrol, "show", "config", timeout=self.command_timeout)
            match = re.search(r"^MaxArraySize\s*=\s*([0-9]+)", result.stdout, re.MULTILINE)
            if result.ok and match:
                size = int(match.group(1))
            else:
                logger.debug("scontrol show config did not tell MaxArraySize; taking %s", size)
            self._max_array_size = max(1, size)
        return self._max_array_size

    async def submit_array(self, jobs: Sequence[Job], throttle: int) -> list[str]:
        """One ``sbatch --array=0-<n-1>%<throttle>`` for ``jobs``: task ``i``
        runs ``jobs[i]``'s own wrapper. Slurm's own output of task ``i`` goes
        through a link in the array's folder (``<workdir>/.arrays/<name>/``) to
        the member's ``job.stdout``/``job.stderr``, as for a job alone.

        Returns the members' job ids, ``<array id>_<task id>``.
        """
        await asyncio.gather(*(self.wrapped_job_script(job) for job in jobs))
        name = self.array_name(jobs)
        folder = self.workdir / ".arrays" / name
        os.makedirs(folder, exist_ok=True)
        for task, job in enumerate(jobs):
            meta = str(job.metadir.mounted)
            for ext, target in (("out", "job.stdout"), ("err", "job.stderr")):
                link = os.path.join(folder, f"{task}.{ext}")
                if os.path.lexists(link):
                    os.unlink(link)
                os.symlink(f"{meta}/{target}", link)
        mounted = _escape_filename_pattern(str(folder.mounted))
        script = "\n".join(
            [
                self._script_head(
                    name, f"{mounted}/%a.out", f"{mounted}/%a.err", jobs[0].resources
                ),
                f"# An array of {len(jobs)} xqute jobs: task i runs job i's own wrapper",
                self.array_dispatch(jobs, "SLURM_ARRAY_TASK_ID", 0),
                "",
            ]
        )
        path = os.path.join(folder, "array.sh")
        with open(path, "w") as handle:
            handle.write(script)
        array_id = await self._sbatch(f"--array=0-{len(jobs) - 1}%{max(1, throttle)}", path)
        return self._record_array(array_id, jobs)

    def _record_array(self, array_id: str, jobs: Sequence[Job]) -> list[str]:
        jids = [f"{array_id}_{task}" for task in range(len(jobs))]
        self._arrays[array_id] = list(jobs)
        for jid, job in zip(jids, jobs):
            self._tracked[jid] = _Tracked(job, "PENDING")
        return jids

    async def find_submitted_array(self, jobs: Sequence[Job], ran: bool) -> list[str] | None:
        """The array named ``array_name(jobs)`` that reached Slurm after all."""
        name = self.array_name(jobs)
        ids = await self._ids_named(name)
        if not ids and ran:
            ids = await self._ids_named(name, any_state=True)
        if not ids:
            return None
        return self._record_array(max((array_id_of(jid) for jid in ids), key=int), jobs)

    async def find_submitted(self, job: Job, ran: bool) -> str | None:
        """The Slurm job of ``job``'s name that is queued or running; when its
        wrapper has run, the latest of that name in any state."""
        ids = await self._ids_named(self.job_name(job))
        if not ids and ran:
            ids = await self._ids_named(self.job_name(job), any_state=True)
        plain = [jid for jid in ids if _JOB_ID_RE.fullmatch(jid)]
        if not plain:
            return await self._find_member(job, ran)
        jid = max(plain, key=int)
        self._tracked[jid] = _Tracked(job, "PENDING")
        return jid

    async def _find_member(self, job: Job, ran: bool) -> str | None:
        """``<array id>_<task>`` of a Slurm array of this workdir whose script
        runs ``job``'s wrapper (a manager killed between the array's sbatch and
        its members' jid files), if Slurm still has that array."""
        folder = os.path.join(str(self.workdir), ".arrays")
        prefix = self.job_name(job).rsplit("-", 1)[0] + "-"
        try:
            names = sorted(os.listdir(folder), reverse=True)
        except OSError:
            return None
        for name in names:
            first = name[len(prefix):].partition("-a")[0] if name.startswith(prefix) else ""
            if not first.isdigit() or int(first) > job.index:
                continue
            try:
                with open(os.path.join(folder, name, "array.sh")) as handle:
                    task = self.dispatched_task(handle.read(), job)
            except OSError:
                continue
            if task is None:
                continue
            ids = await self._ids_named(name, any_state=ran)
            if ids:
                jid = f"{max((array_id_of(i) for i in ids), key=int)}_{task}"
                self._tracked[jid] = _Tracked(job, "PENDING")
                return jid
        return None

    async def _ids_named(self, name: str, any_state: bool = False) -> list[str]:
        """The ids squeue lists for Slurm jobs named ``name`` that are queued or
        running (or, with ``any_state``, still known to squeue at all)."""
        states = ["-t", "all"] if any_state else []
        result = await run_command(
            self.squeue, "--me", "-h", *states, "--name", name, "-o", "%i",
            timeout=self.command_timeout,
        )
        self.status_calls += 1
        return result.stdout.split() if result.ok else []

    async def exit_cause(self, job: Job, rc: int) -> str:
        """The base's reading of ``rc``, sharpened by what Slurm wrote into the
        job's stderr when it ended the job: a time limit, a memory limit, a
        node failure, a preemption or a cancel (the wrapper then recorded only
        the signal: 143, or 137)."""
        cause = await super().exit_cause(job, rc)
        if cause in ("ok", "timeout"):
            return cause
        try:
            tail = await _tail(job.stderr_file)
        except OSError:
            return cause
        for pattern, named in _STDERR_CAUSES:
            if pattern.search(tail):
                return named
        return cause

    # --------------------------------------------------------------- killing
    async def kill_jobs(self, jobs: Sequence[Job]) -> None:
        """``scancel`` all of ``jobs`` in one call (a few for thousands); an
        array whose live members all go is cancelled by its array id."""
        jids = [str(job.jid) for job in jobs if job.jid]
        for chunk in chunks(self._collapse_arrays(jobs, jids), MAX_LISTED_IDS):
            result = await run_command(self.scancel, *chunk, timeout=self.command_timeout)
            if not result.ok:
                # jobs that already ended are refused; the others are cancelled
                message = (
                    one_line(result.stderr, strip=_ERROR_PREFIX_RE) or f"scancel exited {result.rc}"
                )
                if result.rc < 0 or result.rc == 127 or not _ALREADY_GONE_RE.search(message):
                    # missing, hanging or refusing: the jobs may still run
                    logger.warning("Slurm's scancel failed for %s: %s", " ".join(chunk), message)
                else:
                    logger.debug("scancel %s: %s", " ".join(chunk), message)
        for jid in jids:
            if jid in self._tracked:
                self._tracked[jid].state = "CANCELLED"

    def _collapse_arrays(self, jobs: Sequence[Job], jids: list[str]) -> list[str]:
        """``jids`` with the members of an array this manager submitted
        replaced by the array's id when every member still live is among them."""
        killing = set(jobs)
        whole = {
            array_id
            for array_id, members in self._arrays.items()
            if all(
                job in killing or JobStatus.is_final(job._status) or job.jid != f"{array_id}_{task}"
                for task, job in enumerate(members)
            )
        }
        collapsed: list[str] = []
        for jid in jids:
            array_id = array_id_of(jid)
            if array_id in whole and jid != array_id:
                if array_id not in collapsed:
                    collapsed.append(array_id)
            else:
                collapsed.append(jid)
        return collapsed

    # -------------------------------------------------------------- querying
    async def query_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobQuery]:
        """What Slurm says about ``jobs``: one ``squeue`` call for all of them,
        plus one ``sacct`` call for those that left the queue. (The base class
        paces these calls and gives ended jobs' files their grace.)"""
        answers, by_jid = await self._job_ids(jobs)
        if not by_jid:
            return answers
        self._forget_finished()
        found = await self._squeue(by_jid)
        if found is None:  # Slurm did not answer: unknown for now
            return answers
        # arrays still listed: a member missing from one left it without running
        listed = {array_id_of(jid) for jid in found}
        gone = [jid for jid in by_jid if jid not in found]
        accounts: dict[str, _Account] = {}
        if gone:
            accounts = await self._sacct(gone)
            found.update(
                (jid, (account.state, account.reason)) for jid, account in accounts.items()
            )
        for jid, job in by_jid.items():
            state, reason = found.get(jid, ("", ""))
            if not state and "_" in jid and array_id_of(jid) in listed:
                # Slurm keeps no record of a pending task cancelled on its own
                reason = (
                    f"Slurm job {jid} left array {array_id_of(jid)} before it ran "
                    "(cancelled while pending?)"
                )
                state = "CANCELLED"
            self._tracked.setdefault(jid, _Tracked(job, "")).state = state
            answers[job] = await self._answer(job, jid, state, reason, accounts.get(jid))
        return answers

    async def query_jobs_and_usage(
        self, jobs: Sequence[Job], ended: Sequence[str]
    ) -> tuple[dict[Job, JobQuery], dict[str, dict[str, Any]]]:
        """A status round while some ended jobs wait for their usage figures:
        **one** ``sacct`` call answers both, the live ``jobs`` (sacct lists
        pending and running jobs too; an array by its id) and the ``ended``
        ones, in place of ``squeue``. So a round costs one call with usage as
        without. A live job sacct does not list yet (slurmdbd lags behind the
        controller) is left unanswered this round, and put to ``squeue`` after
        ``SACCT_MISSES`` such rounds. Without accounting, or past
        ``MAX_LISTED_IDS`` ids, the base's squeue-then-sacct."""
        answers, by_jid = await self._job_ids(jobs)
        due = [str(jid) for jid in ended]
        # arrays by their ids: sacct lists their members (a short command line)
        asked = list(dict.fromkeys(array_id_of(jid) for jid in [*by_jid, *due]))
        if self._accounting is False or len(asked) > MAX_LISTED_IDS:
            return await super().query_jobs_and_usage(jobs, ended)
        self._forget_finished()
        accounts, error = await self._sacct_accounts(asked)
        if error:  # Slurm did not answer: unknown for now (or no accounting at all)
            return answers, {}
        lagging: list[Job] = []
        for jid, job in by_jid.items():
            account = accounts.get(jid)
            if account is None or not account.state:
                misses = self._sacct_misses.get(jid, 0) + 1
                if misses >= SACCT_MISSES:
                    self._sacct_misses.pop(jid, None)
                    lagging.append(job)
                else:
                    self._sacct_misses[jid] = misses
                continue
            self._sacct_misses.pop(jid, None)
            self._tracked.setdefault(jid, _Tracked(job, "")).state = account.state
            answers[job] = await self._answer(job, jid, account.state, account.reason, account)
        if lagging:
            answers.update(await self.query_jobs(lagging))
        usage = {
            jid: accounts[jid].figures(full=jid in self._vanished)
            for jid in due
            if jid in accounts and accounts[jid].settled
        }
        self._vanished.difference_update(usage)
        return answers, usage

    async def query_usage(self, jids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """sacct's figures for the ended jobs ``jids``, in one call (a few
        for thousands): peak memory (the batch step's MaxRSS), CPU time
        (TotalCPU) and host (NodeList); wall time too for a trial whose
        wrapper did not record its own. Jobs whose accounting is not settled
        yet (slurmdbd lags) are left out, to be asked again."""
        if not self.usage or self._accounting is False or not jids:
            return {}
        # arrays by their ids: sacct lists their members (a short command line)
        accounts, _ = await self._sacct_accounts(
            list(dict.fromkeys(array_id_of(str(jid)) for jid in jids))
        )
        usage = {
            str(jid): accounts[str(jid)].figures(full=str(jid) in self._vanished)
            for jid in jids
            if str(jid) in accounts and accounts[str(jid)].settled
        }
        self._vanished.difference_update(usage)
        return usage

    def job_usage(self, job: Job) -> dict[str, Any]:
        """The figures of ``job``'s trial that the status rounds' sacct call
        already had (it answered while the job had ended). A trial that ended
        without its wrapper's record (killed by Slurm: out of memory, time,
        node failure) takes all of sacct's figures, now or when fetched."""
        jid = str(job.jid or "")
        vanished = job._rc == RC_VANISHED
        figures = self._ended_figures.pop(jid, None)
        if figures is None:
            if vanished and jid:
                self._vanished.add(jid)
            return {}
        if not vanished:
            # the wrapper timed the command itself, to the millisecond
            figures = {key: value for key, value in figures.items() if key != "wall_s"}
            figures["sources"] = {
                key: src for key, src in figures["sources"].items() if key != "wall_s"
            }
        return figures

    async def _job_ids(self, jobs: Sequence[Job]) -> tuple[dict[Job, JobQuery], dict[str, Job]]:
        """({job: answer} for jobs with no job id, {jid: job} for the others)."""
        answers: dict[Job, JobQuery] = {}
        by_jid: dict[str, Job] = {}
        for job in jobs:
            jid = job.jid or await job.get_jid()
            if not jid:
                answers[job] = JobQuery(JobQuery.ENDED, f"no Slurm job id was recorded for job {job.index}")
            else:
                by_jid[str(jid)] = job
        return answers, by_jid

    async def _answer(
        self, job: Job, jid: str, state: str, reason: str, account: "_Account | None"
    ) -> JobQuery:
        """``_to_query``, its cause sharpened for a job that ended FAILED or
        CANCELLED: over its memory (sacct's MaxRSS above ReqMem, or Slurm's
        "Exceeded job memory limit" in its stderr) is ``oom``; a time limit
        or node failure in its stderr likewise. Keeps the figures of an
        ended job for its usage record (``job_usage``)."""
        query = self._to_query(jid, state, reason)
        if query.state != JobQuery.ENDED:
            return query
        if account is not None and account.settled:
            self._ended_figures[jid] = account.figures(full=True)
        if query.cause not in ("failed", "cancelled", ""):
            return query
        cause = "oom" if account is not None and account.over_memory else ""
        if not cause:
            try:
                tail = await _tail(job.stderr_file)
            except OSError:
                tail = ""
            cause = next((named for pattern, named in _STDERR_CAUSES if pattern.search(tail)), "")
        if cause and cause != query.cause:
            return JobQuery(query.state, query.reason, cause=cause)
        return query

    def _forget_finished(self) -> None:
        """Stop following jobs that ended or were requeued under a new job id."""
        for jid, tracked in list(self._tracked.items()):
            job = tracked.job
            if job.status not in _FOLLOWED_STATUSES or job.jid not in (None, jid):
                del self._tracked[jid]
                self._sacct_misses.pop(jid, None)
        if len(self._ended_figures) > 4 * MAX_LISTED_IDS:  # never taken: keep it bounded
            self._ended_figures.clear()

    async def _squeue(self, by_jid: dict[str, Job]) -> dict[str, tuple[str, str]] | None:
        """{jid: (state, reason)} for the jobs squeue still lists; None on failure."""
        args = [self.squeue, "-h", "-t", "all", "-o", "%i|%T|%r"]
        # an array's members are listed by asking for the array
        asked = list(dict.fromkeys(array_id_of(jid) for jid in by_jid))
        if len(asked) > MAX_LISTED_IDS:
            args.append("--me")
        else:
            args.append("--jobs=" + ",".join(asked))
        result = await run_command(*args, timeout=self.command_timeout)
        self.status_calls += 1
        if not result.ok:
            if "invalid job id" in result.stderr.lower():
                return {}  # none of them is in the queue any more
            logger.warning(
                "Slurm's squeue failed (%s); asking again later",
                one_line(result.stderr, strip=_ERROR_PREFIX_RE),
            )
            return None
        unreadable = [
            line for line in result.stdout.splitlines()
            if line.strip() and not _SQUEUE_LINE_RE.fullmatch(line.strip())
        ]
        if unreadable:
            logger.warning(
                "Slurm's squeue printed what xqute cannot read (%r); asking again later",
                unreadable[0][:200],
            )
            return None
        found = {}
        for line in result.stdout.splitlines():
            fields = line.strip().split("|")
            if len(fields) < 2:
                continue
            for jid in expand_job_ids(fields[0]):
                if jid in by_jid:
                    found[jid] = (fields[1].strip(), "|".join(fields[2:]).strip())
        return found

    async def _sacct(self, jids: list[str]) -> dict[str, "_Account"]:
        """{jid: account} from accounting for jobs gone from squeue; a job
        sacct could not answer for has an account with no state and a reason."""
        accounts, error = await self._sacct_accounts(jids)
        if error:
            for jid in jids:
                if jid not in accounts:
                    accounts[jid] = _Account(reason=f"sacct could not say how it ended: {error}")
        return accounts

    async def _sacct_accounts(self, ids: list[str]) -> tuple[dict[str, "_Account"], str]:
        """({jid: account}, error) from ``sacct`` (without ``-X``: with the
        job steps, for MaxRSS) about job or array ids ``ids``: one call per
        ``MAX_LISTED_IDS`` ids. ``error`` says why a call failed ("" if none)."""
        if self._accounting is False:
            return {}, "Slurm accounting is not available"
        accounts: dict[str, _Account] = {}
        error = ""
        for chunk in chunks(ids, MAX_LISTED_IDS):
            result = await run_command(
                self.sacct, "-n", "-P", "-j", ",".join(chunk), "-o", SACCT_FIELDS,
                timeout=self.command_timeout,
            )
            self.status_calls += 1
            if not result.ok:
                message = (
                    one_line(result.stderr, strip=_ERROR_PREFIX_RE) or f"sacct exited {result.rc}"
                )
                if result.rc == 127 or "disabled" in message.lower():
                    self._accounting = False
                    logger.info(
                        "Slurm accounting is not available (%s): jobs that leave the "
                        "queue are resolved from their metadir alone", message
                    )
                else:
                    logger.warning("Slurm's sacct failed: %s", message)
                error = message
                continue
            unreadable = [
                line for line in result.stdout.splitlines()
                if line.strip() and not _SACCT_LINE_RE.fullmatch(line.strip())
            ]
            if unreadable:
                logger.warning("Slurm's sacct printed what xqute cannot read: %r", unreadable[0][:200])
                error = f"it printed {unreadable[0][:80]!r}"
                continue
            self._accounting = True
            for line in result.stdout.splitlines():
                _read_sacct_line(line.strip().split("|"), accounts)
        for account in accounts.values():
            account.settle()
        return accounts, error

    def _to_query(self, jid: str, state: str, reason: str) -> JobQuery:
        """Map a Slurm state (and reason) to a JobQuery."""
        if state in PENDING_STATES:
            if reason in STUCK_PENDING_REASONS:
                return JobQuery(
                    JobQuery.ERROR, f"Slurm job {jid} can never start: pending with reason {reason}"
                )
            return JobQuery(JobQuery.PENDING, reason)
        if state in RUNNING_STATES:
            return JobQuery(JobQuery.RUNNING)
        why = f" ({reason})" if reason and reason != "None" else ""
        if reason.startswith(f"Slurm job {jid} "):  # the whole story already
            return JobQuery(JobQuery.ENDED, f"{reason} and it did not record its return code")
        if state in ENDED_STATES:
            return JobQuery(
                JobQuery.ENDED,
                f"Slurm job {jid} ended as {state}{why} without recording its return code",
                cause=STATE_CAUSES.get(state, ""),
            )
        if state in ERROR_STATES:
            return JobQuery(JobQuery.ERROR, f"Slurm job {jid} is stuck in state {state}{why}")
        if not state:
            return JobQuery(
                JobQuery.ENDED,
                f"Slurm job {jid} is no longer known to Slurm{why} and it did not record "
                "its return code",
            )
        if state not in self._warned_states:
            self._warned_states.add(state)
            logger.warning(
                "Slurm reports a state xqute does not know, %r (job %s); treating it as "
                "still pending", state, jid,
            )
        return JobQuery(JobQuery.PENDING, state)


async def _tail(path: Any, size: int = 4096) -> str:
    """The last ``size`` bytes of a local file, as text."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - size))
        return handle.read().decode(errors="replace")


# Manager-side statuses of a job whose Slurm job is still followed.
_FOLLOWED_STATUSES = (JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.KILLING)


@dataclass
class _Tracked:
    """A Slurm job being followed: its job and the last state Slurm gave."""

    job: Job
    state: str


@dataclass
class _Account:
    """What sacct says of one job: its state (and why), and what it used."""

    state: str = ""
    reason: str = ""
    cpu_s: float | None = None
    wall_s: float | None = None
    host: str | None = None
    requested_mb: float | None = None
    peak_mb: float | None = None  # the most of its steps' MaxRSS
    batch_state: str = ""  # of its batch step ("" when sacct has none)
    batch_signal: int = 0  # the signal that ended the batch step

    def settle(self) -> None:
        """slurmdbd may have the batch step running before it has the job
        running: the job is running then."""
        if self.state in PENDING_STATES and self.batch_state in RUNNING_STATES:
            self.state = "RUNNING"

    @property
    def settled(self) -> bool:
        """Ended, with its figures recorded: its batch step ended too (or it
        never ran on a node)."""
        return self.state in ENDED_STATES and (
            self.host is None or self.batch_state in ENDED_STATES
        )

    @property
    def over_memory(self) -> bool:
        """Its steps' peak memory passed what it asked for."""
        return (
            self.peak_mb is not None and self.requested_mb is not None
            and self.peak_mb > self.requested_mb
        )

    def figures(self, full: bool) -> dict[str, Any]:
        """Usage figures for the usage record (``full``: wall time too)."""
        figures: dict[str, Any] = {
            "peak_memory_mb": None if self.peak_mb is None else round(self.peak_mb, 1),
            # slurmstepd's rusage misses processes killed by a signal
            "cpu_s": None if self.batch_signal else self.cpu_s,
            "host": self.host,
        }
        if full:
            figures["wall_s"] = self.wall_s
        figures = {key: value for key, value in figures.items() if value is not None}
        figures["sources"] = {key: "sacct" for key in figures}
        return figures


def _read_sacct_line(fields: list[str], accounts: dict[str, _Account]) -> None:
    """Add one line of ``sacct -o SACCT_FIELDS`` to ``accounts``: a job's
    line gives its state, CPU time, elapsed time, node and request; a step's
    line (``12.batch``) its peak memory."""
    if len(fields) < 4:
        return
    fields = fields + [""] * (9 - len(fields))
    job_id, step_state, exit_code, why, max_rss, total_cpu, elapsed, nodes, req_mem = fields[:9]
    base, dot, step = job_id.partition(".")
    jids = expand_job_ids(base)
    if dot:
        for jid in jids:
            account = accounts.setdefault(jid, _Account())
            rss = parse_sacct_memory(max_rss)
            if rss is not None:
                account.peak_mb = max(rss, account.peak_mb or 0.0)
            if step == "batch":
                account.batch_state = step_state.partition(" ")[0]
                signal = exit_code.partition(":")[2]
                account.batch_signal = int(signal) if signal.isdigit() else 0
        return
    # "CANCELLED by 1000" -> CANCELLED, keeping who did it for the reason
    state, _, by_whom = step_state.partition(" ")
    details = [f"exit code {exit_code}"] if exit_code not in ("", "0:0") else []
    if by_whom:
        details.insert(0, by_whom)
    if why and why != "None":
        details.append(why)
    host = nodes.strip() if nodes.strip() and nodes.strip() != "None assigned" else None
    for jid in jids:
        account = accounts.setdefault(jid, _Account())
        account.state = state
        account.reason = ", ".join(details)
        account.cpu_s = parse_sacct_duration(total_cpu)
        account.wall_s = parse_sacct_duration(elapsed)
        account.host = host
        account.requested_mb = parse_sacct_memory(req_mem)


__all__: Iterable[str] = ["SlurmScheduler", "directive_lines", "format_directive_value"]
