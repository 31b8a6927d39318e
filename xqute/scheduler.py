"""The scheduler base class: the one place that moves jobs between states.

A backend (one module under ``xqute.schedulers``) says only how to submit, kill
and ask about jobs. Everything else lives here: building the wrapper script,
deciding a job's status from its meta files and from the backend's answers,
firing the hooks, retrying refused submissions, and pacing the questions asked
of a shared cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Sequence

from diot import Diot
from panpath import LocalPath

from . import defaults
from .defaults import JobErrorStrategy, JobStatus
from .job import Job
from .path import SpecPath, job_folders_with, keep_local_copy, read_meta, write_meta
from .plugin import call_async_hook, call_hook
from .resources import USAGE_RAW_FILE, Resources, parse_retry_policy, usage_from_wrapper
from .utils import check_env_name, empty_command_reason, logger, shell_quote

if TYPE_CHECKING:  # pragma: no cover
    from .path import MountedPath


@dataclass(frozen=True)
class JobQuery:
    """What a backend knows about one job.

    ``state`` is one of PENDING (waiting in the scheduler), RUNNING, ENDED (the
    scheduler no longer runs it: finished, cancelled, timed out, lost) or ERROR
    (stuck in an error state it will not leave by itself). ``reason`` says why an
    ENDED or ERROR job stopped, when the scheduler tells.
    """

    state: str
    reason: str = ""
    # for an ENDED job, how it ended when the scheduler tells: one of
    # xqute.resources.EXIT_CAUSES ("timeout", "oom", "node_fail", ...)
    cause: str = ""

    PENDING = "pending"
    RUNNING = "running"
    ENDED = "ended"
    ERROR = "error"

    @property
    def alive(self) -> bool:
        """Whether the scheduler still has the job: PENDING or RUNNING."""
        return self.state in (self.PENDING, self.RUNNING)


class SubmissionError(Exception):
    """A backend could not submit a job. ``transient`` errors (a busy controller,
    a submit limit) are retried with backoff; others fail the job with rc -2.

    ``ambiguous``: the request may have reached the scheduler all the same (the
    reply was lost: a timeout, a dropped connection). The base class then asks
    the backend's ``find_submitted`` before trying again, so a job is never
    submitted twice.
    """

    def __init__(self, message: str, transient: bool = False, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.ambiguous = ambiguous


# Any name a pipen process may have: Unicode word characters, dots and dashes.
_JOBNAME_PREFIX_RE = re.compile(r"[\w.+-]+")
# What every scheduler accepts in a job name (Grid Engine refuses ":", Batch
# wants lower-case ASCII, and so on): the prefix is reduced to these.
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]", re.ASCII)
_SAFE_PREFIX_MAX = 40


def check_jobname_prefix(prefix: str) -> str:
    """Refuse a prefix that could break a command line or directive (spaces,
    ``:``, ``/``, newlines); any word characters, ``.``, ``+`` and ``-`` are fine,
    Unicode and any length included (see ``safe_jobname_prefix``)."""
    # fullmatch: "$" would let a trailing newline through
    if not isinstance(prefix, str) or not _JOBNAME_PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"Invalid jobname_prefix {prefix!r}: use letters, digits or _.+- characters"
        )
    return prefix


def safe_jobname_prefix(prefix: str) -> str:
    """``prefix`` reduced to what every scheduler takes in a job name: ASCII
    letters, digits and ``_.-``, at most 40 characters. A prefix that had to be
    changed gets a short hash of the original, so two prefixes that reduce to
    the same text still give different names."""
    safe = _SAFE_NAME_RE.sub("_", prefix)
    if safe == prefix and len(prefix) <= _SAFE_PREFIX_MAX:
        return prefix
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:6]
    return f"{safe[:_SAFE_PREFIX_MAX - 7]}_{digest}"


_VAR_OR_ESCAPE_RE = re.compile(
    r"\\\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", re.ASCII
)


# bash's builtins and keywords: a command starting with one is not exec'd
_SHELL_OWN_WORDS = frozenset(
    ". : [ [[ ]] { } ! alias bg bind break builtin caller case cd command compgen complete "
    "compopt continue coproc declare dirs disown do done echo elif else enable esac eval exec "
    "exit export false fc fg fi for function getopts hash help history if in jobs kill let "
    "local logout mapfile popd printf pushd pwd read readarray readonly return select set "
    "shift shopt source suspend test then time times trap true type typeset ulimit umask "
    "unalias unset until wait while".split()
)


def shell_word(arg: str) -> str:
    """One command argument as bash text: ``$NAME`` and ``${NAME}`` expand (as
    one word, no globbing or splitting), ``\\$`` is a literal ``$``, and nothing
    else is interpreted: every other character is single-quoted."""
    parts: list[str] = []
    literal = ""
    pos = 0
    for match in _VAR_OR_ESCAPE_RE.finditer(arg):
        literal += arg[pos : match.start()]
        pos = match.end()
        name = match.group(1) or match.group(2)
        if name is None:  # the escape
            literal += "$"
            continue
        if literal:
            parts.append(shell_quote(literal))
            literal = ""
        parts.append(f'"${{{name}}}"')
    literal += arg[pos:]
    if literal or not parts:
        parts.append(shell_quote(literal))
    return "".join(parts)


def check_directive(key: str, value: Any) -> str:
    """A directive value as text, refusing what could end the directive line
    and start another (newlines, NUL)."""
    text = str(value)
    if any(ch in text for ch in "\n\r\0") or any(ch in str(key) for ch in "\n\r\0 "):
        raise ValueError(f"Invalid scheduler option {key}={value!r}: no spaces in names, no newlines or NUL")
    return text


# Return codes the library writes itself.
RC_SUBMISSION_FAILED = -2
RC_VANISHED = -3

_RC_MESSAGES = {
    124: "the job timed out (the scheduler's timeout option, or resources' time)",
    125: "the timeout command itself failed",
    126: "the command could not be executed (permission denied or not a program)",
    127: "the command was not found",
    137: "the job was killed (SIGKILL)",
    143: "the job was terminated (SIGTERM)",
}
# the wrapper's ``case $rc`` arms that explain those codes in the job's stderr
_RC_MESSAGE_CASES = "\n".join(
    f"        {rc}) echo \"xqute: exit code {rc}: {msg}\" >&2 ;;" for rc, msg in _RC_MESSAGES.items()
)


class Scheduler(ABC):
    """Base class of all schedulers.

    Args:
        workdir: where the jobs' metadirs go (``workdir/<index>``).
        forks: how many jobs may be submitted or running at once.
        error_strategy: "ignore", "retry" or "halt".
        num_retries: more trials for a failed job under "retry".
        prescript / postscript: bash code run before / after the command.
        jobname_prefix: prefix of job names (default: the scheduler's name).
        submission_batch: how many submissions run concurrently.
        recheck_interval: accepted for 2.x clients; see ``poll_interval``.
        cwd: the folder the command runs in.
        timeout: seconds after which the command is stopped (0: never).
        **kwargs: ``mounted_workdir`` (the workdir as jobs see it),
            ``poll_interval`` / ``poll_interval_max`` (seconds between status
            rounds, backing off while nothing changes), ``submit_rate``
            (submissions per second at most), ``submit_retries`` (tries for a
            transiently refused submission), ``array`` (False: one submission
            per job, even where the backend submits bursts as arrays),
            ``resources`` (``cpus``, ``memory``, ``time``, ``gpus``: one
            request each backend maps onto its own options),
            ``resource_limits`` (caps on what escalating retries may ask) and
            ``retry_policy`` (what a failure cause changes on the next trial),
            ``usage`` (False: no usage record, ``job.usage``, is kept;
            ``"wait"``: also wait at the run's end for the figures the
            scheduler's accounting had not given by the last status round);
            all other keys go to ``config`` and become scheduler directives.
    """

    name: str = "base"
    job_class: type[Job] = Job
    # True for a backend that is told of job exits (and calls ``self.notify()``)
    # rather than asked: the manager then never polls it on a timer.
    event_driven: bool = False
    # The first poll interval of this backend, in seconds: how often the meta
    # files are read.
    default_poll_interval: float = defaults.DEFAULT_POLL_INTERVAL
    # The least time between two questions to the scheduler (``query_jobs``
    # from the status rounds), and how long a job the scheduler says ended gets
    # for its files to show the end before it is declared gone. 0: ask every
    # round, declare at once. Shared clusters set these (the user may too,
    # through ``query_interval``/``query_interval_max``/``end_grace``).
    default_query_interval: float = 0.0
    default_end_grace: float = 0.0
    # Whether the wrapper runs the command in a process group of its own (so
    # the wrapper can pass a kill on to all of it). False for a scheduler that
    # kills jobs by their process group (Grid Engine's qdel SIGKILLs the
    # wrapper's group only): the command must stay in it to be killed too.
    wrapper_own_process_group: bool = True
    # Attributes naming the programs this backend runs (say ``("sbatch",
    # "squeue")``, each holding a name on PATH or a path): a missing one is a
    # clear FileNotFoundError before the first job, not a failure of every job.
    required_binaries: tuple[str, ...] = ()
    # True for a backend whose scheduler enforces ``resources``' time itself
    # (Slurm's --time); otherwise the wrapper does, with ``timeout``.
    time_enforced_by_scheduler: bool = False

    def __init__(
        self,
        workdir: Any,
        forks: int = defaults.DEFAULT_SCHEDULER_FORKS,
        error_strategy: str = defaults.DEFAULT_ERROR_STRATEGY,
        num_retries: int = defaults.DEFAULT_NUM_RETRIES,
        prescript: str = "",
        postscript: str = "",
        jobname_prefix: str | None = None,
        submission_batch: int | None = None,
        recheck_interval: int = defaults.DEFAULT_RECHECK_INTERVAL,
        cwd: Any = None,
        timeout: float = 0,
        **kwargs: Any,
    ) -> None:
        if type(self).kill_job is Scheduler.kill_job and type(self).kill_jobs is Scheduler.kill_jobs:
            raise TypeError(f"{type(self).__name__} must implement kill_job or kill_jobs")
        if (
            type(self).query_jobs is Scheduler.query_jobs
            and type(self).job_is_running is Scheduler.job_is_running
        ):
            raise TypeError(f"{type(self).__name__} must implement query_jobs or job_is_running")
        if not isinstance(forks, int) or isinstance(forks, bool) or forks < 1:
            raise ValueError(f"forks must be an integer >= 1, got {forks!r}")
        if error_strategy not in JobErrorStrategy.values():
            raise ValueError(
                f"Unknown error strategy {error_strategy!r}; "
                f"use one of {', '.join(JobErrorStrategy.values())}"
            )
        if not isinstance(num_retries, int) or num_retries < 0:
            raise ValueError(f"num_retries must be an integer >= 0, got {num_retries!r}")
        if timeout and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")

        mounted_workdir = kwargs.pop("mounted_workdir", None)
        self.poll_interval = float(kwargs.pop("poll_interval", self.default_poll_interval))
        self.poll_interval_max = float(
            kwargs.pop("poll_interval_max", max(defaults.DEFAULT_POLL_INTERVAL_MAX, self.poll_interval))
        )
        submit_rate = kwargs.pop("submit_rate", None)
        self.query_interval = float(kwargs.pop("query_interval", self.default_query_interval))
        self.query_interval_max = float(
            kwargs.pop("query_interval_max", max(60.0, self.query_interval))
        )
        self.end_grace = float(kwargs.pop("end_grace", self.default_end_grace))
        if self.query_interval < 0 or self.query_interval_max < self.query_interval:
            raise ValueError("query_interval must be >= 0 and <= query_interval_max")
        if self.end_grace < 0:
            raise ValueError(f"end_grace must be >= 0 seconds, got {self.end_grace!r}")
        self.submit_retries = int(kwargs.pop("submit_retries", 5))
        # ``array: False`` turns arrays off; any other value (2.x passed a raw
        # ``array``/``t`` directive through) stays a directive
        self.array = kwargs.pop("array") if isinstance(kwargs.get("array"), bool) else True
        # one resource request for every backend, and how failures escalate it
        self.resources = Resources.parse(kwargs.pop("resources", None))
        self.resource_limits = Resources.parse(kwargs.pop("resource_limits", None), "resource_limits")
        self.retry_policy = parse_retry_policy(kwargs.pop("retry_policy", None))
        self.usage = kwargs.pop("usage", True)
        if not isinstance(self.usage, bool) and self.usage != "wait":
            raise ValueError(f'usage must be True, False or "wait", got {self.usage!r}')
        over = self.resources.over(self.resource_limits)
        if over:
            raise ValueError(f"resources ask for more than resource_limits allow: {over}")
        self._warned_conflicts: set[str] = set()
        if self.poll_interval <= 0 or self.poll_interval_max < self.poll_interval:
            raise ValueError("poll_interval must be > 0 and <= poll_interval_max")
        if submit_rate is not None and float(submit_rate) <= 0:
            raise ValueError(f"submit_rate must be > 0 submissions per second, got {submit_rate!r}")

        workdir = str(workdir)
        if "://" not in workdir:
            # the wrapper may cd elsewhere (cwd): its paths to the metadir must not be relative
            workdir = os.path.abspath(workdir)
            if mounted_workdir is None:
                mounted_workdir = workdir
        self.workdir = SpecPath(workdir, mounted=mounted_workdir)
        self.forks = forks
        self.error_strategy = error_strategy
        self.num_retries = num_retries
        self.prescript = prescript or ""
        self.postscript = postscript or ""
        self.jobname_prefix = check_jobname_prefix(jobname_prefix or self.name)
        # 2.x clients call post_init() themselves and then set this
        self._post_init_called = False
        self._post_init_task: asyncio.Future | None = None
        self.subm_batch = submission_batch or defaults.DEFAULT_SUBMISSION_BATCH
        self.recheck_interval = recheck_interval
        self.cwd = cwd
        self.timeout = timeout
        self._kwargs = kwargs
        self.config = Diot(kwargs)

        self._min_submit_gap = 1.0 / float(submit_rate) if submit_rate else 0.0
        self._next_submit_at = 0.0
        self._submit_lock = asyncio.Lock() if self._min_submit_gap else None
        # pacing of status rounds: the current interval and when the next is due
        self._interval = self.poll_interval
        self._next_round_at = 0.0
        # pacing of the questions to the scheduler within those rounds
        self._query_gap = self.query_interval
        self._next_query_at = 0.0
        # how many times the status rounds asked the scheduler (query_jobs)
        self.query_rounds = 0
        # job -> when the scheduler first said it ended while its files did not
        self._ended_since: dict[Job, float] = {}
        # ended trials whose usage record waits for the scheduler's accounting:
        # jid -> (job, trial, rounds asked so far)
        self._usage_due: dict[str, tuple[Job, int, int]] = {}
        # the manager sets this to be woken up when a job may have changed
        self.notify: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ jobs
    async def post_init(self) -> None:
        """Runs once, before the first job is created."""

    async def close(self) -> None:
        """Runs once when the run ends, to release what the backend holds."""

    async def ensure_post_init(self) -> None:
        """Run ``post_init`` unless it ran already (or a client ran it and set
        ``_post_init_called``); concurrent callers wait for the one run."""
        if self._post_init_called:
            return
        self.check_required_binaries()
        if self._post_init_task is None:
            self._post_init_task = asyncio.ensure_future(self.post_init())
        await asyncio.shield(self._post_init_task)
        self._post_init_called = True

    def check_required_binaries(self) -> None:
        """Raise FileNotFoundError naming the first of ``required_binaries``
        that is not there, and the option that sets its path."""
        for option in self.required_binaries:
            binary = str(getattr(self, option))
            if shutil.which(binary) is None:
                raise FileNotFoundError(
                    f"{self.name} scheduler: {option} not found: {binary!r} (is it installed? "
                    f"set the scheduler option {option}= to its path)"
                )

    async def create_job(self, index: int, cmd: Any, envs: dict[str, Any] | None = None) -> Job:
        """Make job ``index`` and its metadir (running ``post_init`` first, once).

        ``cmd`` may be empty: the command can be set later (``job.cmd = ...``);
        a job still empty when submitted fails with a message saying so.
        """
        await self.ensure_post_init()
        job = self.job_class(
            index,
            cmd,
            self.workdir,
            error_retry=self.error_strategy == JobErrorStrategy.RETRY,
            num_retries=self.num_retries,
            envs=envs,
        )
        await self._ensure_metadir(job)
        return job

    @staticmethod
    async def _ensure_metadir(job: Job) -> None:
        if isinstance(job.metadir, LocalPath):
            try:
                os.mkdir(job.metadir)
            except FileExistsError:
                return
            except FileNotFoundError:  # the workdir itself is new
                os.makedirs(job.metadir, exist_ok=True)
            job._fresh_metadir = job.metadir
        else:
            await job.metadir.a_mkdir(parents=True, exist_ok=True)

    def job_name(self, job: Job) -> str:
        """``<prefix>-<short hash of workdir>-<index>``: unique per run folder.

        The prefix is ``safe_jobname_prefix(jobname_prefix)``: ASCII and short,
        whatever the client's prefix was.
        """
        digest = hashlib.sha256(str(self.workdir).encode()).hexdigest()[:8]
        return f"{safe_jobname_prefix(self.jobname_prefix)}-{digest}-{job.index}"

    # ------------------------------------------------------- the wrapper script
    def jobcmd_shebang(self, job: Job) -> str:
        """First line(s) of the wrapper; backends add their directive lines."""
        return f"#!{defaults.JOBCMD_WRAPPER_LANG}"

    def jobcmd_init(self, job: Job) -> str:
        """Export the job's environment, then the plugins' init code."""
        lines = []
        for name, value in job.envs.items():
            check_env_name(name)
            lines.append(f"export {name}={shell_quote(value)}")
        lines.extend(call_hook("on_jobcmd_init", self, job) or ())
        return "\n".join(lines)

    @property
    def jobcmd_wrapper_init(self) -> str:
        """Shell code run first in the wrapper, once its exit trap is set: with
        ``cwd``, it starts with ``cd <quoted cwd>`` (a failing cd ends the job
        with rc 1 and bash's message in its stderr)."""
        return f"cd {shell_quote(self.cwd)} || exit 1" if self.cwd else ""

    def command_line(self, job: Job) -> str:
        """The job's command as bash text: each argument is one word, where only
        ``$NAME``/``${NAME}`` expand (``\\$`` is a literal ``$``)."""
        return " ".join(shell_word(arg) for arg in job.cmd)

    def jobcmd_prep(self, job: Job) -> str:
        """Set ``$cmd`` to the command line (``command_line``), then the
        plugins' prep code, which may rewrite ``$cmd``; the wrapper evals it."""
        lines = [f"cmd={shell_quote(self.command_line(job))}"]
        lines.extend(call_hook("on_jobcmd_prep", self, job) or ())
        return "\n".join(lines)

    def jobcmd_end(self, job: Job) -> str:
        """The plugins' end code (``$rc`` holds the return code)."""
        return "\n".join(call_hook("on_jobcmd_end", self, job) or ())

    def wrapper_meta_functions(self, job: Job) -> str:
        """Bash functions the wrapper uses to record its meta files.

        ``_xq_put NAME VALUE`` writes ``$_xq_meta/NAME`` in place, with one
        ``printf``: no helper process, no rename. The status is one digit
        over one digit, so a reader sees the old or the new one, never half;
        the rc overwrites the placeholder the manager wrote before the
        submission (``Job.reserve_rc``, same width), and the final status,
        which readers wait for, comes after it. Overwriting in place takes no
        new disk space, so the end is recorded on a full disk too.
        Schedulers whose jobs cannot write the metadir directly override this.
        A metadir the job sees in object storage (``gs://``...) is written through
        the package's own helper, ``python -m xqute.cloudmeta``.
        """
        if not isinstance(job.metadir.mounted, LocalPath):
            from .cloudmeta import wrapper_meta_functions

            return wrapper_meta_functions()
        return r"""_xq_put() { printf '%s\n' "$2" 1<>"$_xq_meta/$1"; }
_xq_reserve() { :; }
_xq_put_final() {
    printf '%-8s\n' "$1" 1<>"$_xq_meta/job.rc"
    printf '%s\n' "$2" 1<>"$_xq_meta/job.status"
}
_xq_redirect() { exec >"$_xq_meta/job.stdout" 2>"$_xq_meta/job.stderr"; }
# start, end, host, then bash's times (the command's CPU): builtins only
_xq_usage() { { echo "$_xq_t0 ${EPOCHREALTIME:-} ${HOSTNAME:-}"; times; _xq_peak; } >"$_xq_meta/job.usage.raw"; } 2>/dev/null"""

    def wrap_job_script(self, job: Job) -> str:
        """The text of the bash script that runs ``job``."""
        meta: MountedPath = job.metadir.mounted
        limit = self.time_limit(job)
        timeout = f"timeout {shell_quote(limit)} " if limit else ""
        if self.wrapper_own_process_group:
            job_control_on = "# own process group for the command, so a kill reaches all of it\nset -m"
            job_control_off = "set +m"
        else:
            job_control_on = "# the command stays in the wrapper's process group, which the scheduler kills"
            job_control_off = ""
        prep = self.jobcmd_prep(job)
        # a plain command runs in the forked child itself (exec), not in a
        # second fork of it: one process less per job
        run = "exec " if self._runs_by_exec(job, prep) else ""
        return f"""{self._checked_shebang(job)}
# Job {job.index} of an xqute run ({self.name} scheduler). Generated by xqute.
set -u
_xq_meta={shell_quote(meta)}
{self.wrapper_meta_functions(job)}
{self._wrapper_peak_function(job)}{"" if self.usage else chr(10) + "_xq_usage() { :; }  # usage: False"}
_xq_put job.status {JobStatus.RUNNING}
_xq_t0=${{EPOCHREALTIME:-}}
_xq_reserve
_xq_redirect

_xq_finish() {{
    rc=$?
    trap '' INT TERM HUP
    # whatever the command left in the background in its group goes with it
    [ -n "${{_xq_child:-}}" ] && kill -TERM -- "-$_xq_child" 2>/dev/null
    case $rc in
{_RC_MESSAGE_CASES}
    esac
    declare -F _xq_usage >/dev/null && _xq_usage
    if [ "$rc" -eq 0 ]; then _xq_put_final "$rc" {JobStatus.FINISHED}
    else _xq_put_final "$rc" {JobStatus.FAILED}; fi
    # postscript
{self.postscript}
    # on_jobcmd_end
{self.jobcmd_end(job)}
    exit "$rc"
}}
_xq_signal() {{
    # pass a kill on to the command's own process group, then record how it ended
    if [ -n "${{_xq_child:-}}" ]; then
        kill -s "$1" -- "-$_xq_child" 2>/dev/null || kill -s "$1" "$_xq_child" 2>/dev/null
    else exit $(( 128 + $(kill -l "$1") )); fi
}}
trap _xq_finish EXIT
trap '_xq_signal TERM' TERM
trap '_xq_signal INT' INT
trap '_xq_signal HUP' HUP
{self.jobcmd_wrapper_init}

# environment, on_jobcmd_init
{self.jobcmd_init(job)}
# prescript
{self.prescript}
# the command, on_jobcmd_prep
{prep}
{job_control_on}
{self._command_line_in_background(job, run + timeout)}
_xq_child=$!
{job_control_off}
while :; do
    wait "$_xq_child"
    rc=$?
    kill -0 "$_xq_child" 2>/dev/null || break
done
exit "$rc"
"""

    def peak_memory_file(self, job: Job) -> str | None:
        """A file, as the job sees it, holding the peak memory in bytes of a
        cgroup that is the job's own (a container's, or one the backend made
        for it); the wrapper reads it with a builtin when the command ends.
        None: the backend measures peak memory otherwise, or cannot."""
        return None

    def _wrapper_peak_function(self, job: Job) -> str:
        path = self.peak_memory_file(job)
        if not path:
            return "_xq_peak() { :; }"
        return (
            "# the peak memory of the job's own cgroup, read with a builtin\n"
            f"_xq_peak() {{ local p; read -r p <{shell_quote(path)} && echo \"peak $p\"; }}"
        )

    def command_shell_setup(self, job: Job) -> str:
        """Shell text the command's own shell (the wrapper's background child)
        runs before the command, such as a best-effort ``ulimit``; "" for
        none. The wrapper, which records the end, is not subject to it."""
        return ""

    def _command_line_in_background(self, job: Job, before_cmd: str) -> str:
        setup = self.command_shell_setup(job)
        line = f'eval "{before_cmd}$cmd"'
        return f"{{ {setup}; {line}; }} &" if setup else f"{line} &"

    def _runs_by_exec(self, job: Job, prep: str) -> bool:
        """Whether the wrapper may ``exec`` the command line: no plugin code
        may have rewritten ``$cmd``, and its first word names a program (not
        one of bash's own words, not an expansion)."""
        if prep != f"cmd={shell_quote(self.command_line(job))}" or not job.cmd:
            return False
        first = job.cmd[0]
        return bool(first) and "$" not in first and first not in _SHELL_OWN_WORDS

    def time_limit(self, job: Job) -> float:
        """Seconds after which the wrapper stops the command (0: never): the
        ``timeout`` option, and ``resources``' time unless the scheduler
        itself enforces that (``time_enforced_by_scheduler``)."""
        limit = float(self.timeout or 0)
        asked = getattr(job, "resources", None)
        if asked and asked.time_s and not self.time_enforced_by_scheduler:
            limit = min(limit, asked.time_s) if limit else float(asked.time_s)
        return int(limit) if limit == int(limit) else limit

    def _checked_shebang(self, job: Job) -> str:
        """The backend's shebang and directive lines, refused if any line is not
        a comment: a line break in an option name or value would otherwise end a
        directive and start a line of shell code in the wrapper."""
        text = self.jobcmd_shebang(job)
        for line in text.split("\n"):
            if not line.startswith("#") or "\r" in line or "\0" in line:
                raise ValueError(
                    f"Invalid scheduler option: the {self.name} directives of job {job.index} "
                    f"would hold a line that is not a directive: {line!r}"
                )
        return text

    # the wrapper of a job is ``<WRAPPED_SCRIPT_PREFIX><scheduler name>``
    WRAPPED_SCRIPT_PREFIX = "job.wrapped."

    @property
    def wrapped_script_name(self) -> str:
        """The wrapper's file name in the job's metadir: ``job.wrapped.<name>``."""
        return f"{self.WRAPPED_SCRIPT_PREFIX}{self.name}"

    async def wrapped_job_script(self, job: Job) -> SpecPath:
        """Write the wrapper into the job's metadir; returns its path."""
        path = job.metadir / self.wrapped_script_name
        text = self.wrap_job_script(job)
        await write_meta(path, text)
        if not isinstance(path, LocalPath):
            # a backend running it from a local copy needs no download
            keep_local_copy(path, text)
        return path

    # ------------------------------------------------- what a backend implements
    @abstractmethod
    async def submit_job(self, job: Job) -> Any:
        """Hand ``job`` to the scheduler; return its job id.

        Raise SubmissionError when the scheduler refuses it.
        """

    async def kill_job(self, job: Job) -> None:
        """Kill one job (backends implement this or ``kill_jobs``)."""
        await self.kill_jobs([job])

    async def kill_jobs(self, jobs: Sequence[Job]) -> None:
        """Kill several jobs, in as few scheduler calls as the backend can."""
        await asyncio.gather(*(self.kill_job(job) for job in jobs))

    async def query_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobQuery]:
        """Ask the scheduler about ``jobs`` in one call.

        Jobs missing from the answer are unknown for now (asked again later).
        The default asks ``job_is_running`` for each job, for backends written
        for xqute 2.x.
        """
        answers = await asyncio.gather(*(self.job_is_running(job) for job in jobs))
        return {
            job: JobQuery(JobQuery.RUNNING if alive else JobQuery.ENDED)
            for job, alive in zip(jobs, answers)
        }

    async def job_is_running(self, job: Job) -> bool:
        """Whether the scheduler still has ``job`` (pending or running)."""
        answer = (await self.query_jobs([job])).get(job)
        return answer is not None and answer.alive

    async def job_fails_before_running(self, job: Job) -> bool:
        """Whether ``job`` failed before its wrapper could run (2.x hook point)."""
        return False

    async def find_submitted(self, job: Job, ran: bool) -> Any:
        """After a submission whose reply was lost: the id under which ``job``
        reached the scheduler anyway, or None if it did not.

        Look for a queued or running job of ``job_name(job)``; with ``ran`` (the
        job's wrapper has written its status file since, so it did reach the
        scheduler and may have ended already), also for ended ones.
        """
        return None

    async def submit_array(self, jobs: Sequence[Job], throttle: int) -> list[Any]:
        """Hand ``jobs`` (two or more) to the scheduler as one array job, at most
        ``throttle`` of them running at once; return each member's job id, in
        order. Backends that can implement it (and the base class then submits
        bursts of jobs this way unless the ``array`` option is False).

        Each member runs its own wrapper (``wrapped_job_script``), picked by
        the task id (``array_dispatch``). Raise SubmissionError on a refusal.
        """
        raise NotImplementedError

    async def max_array_size(self) -> int:
        """The most members one array may have (backends read their
        scheduler's limit, once)."""
        return 1000

    async def find_submitted_array(self, jobs: Sequence[Job], ran: bool) -> list[Any] | None:
        """After an array submission whose reply was lost: the member job ids
        under which ``jobs`` reached the scheduler anyway (look for an array
        named ``array_name(jobs)``), or None if it did not."""
        return None

    # ------------------------------------------------------ state transitions
    async def _mark_started(self, job: Job) -> None:
        if not job._started:
            job._started = True
            job._status = JobStatus.RUNNING
            logger.debug("Job %s started", job.index)
            await call_async_hook("on_job_started", self, job)

    async def _mark_ended(
        self, job: Job, rc: int, reason: str = "", write: bool = False, cause: str = ""
    ) -> None:
        """Record that ``job`` ended with ``rc`` and fire its hooks.

        ``write``: the wrapper could not record the end itself, so xqute writes
        rc, status and ``reason`` (into the stderr file) for it. ``cause``: how
        it ended, when the scheduler said (else read from ``rc``).
        """
        await self._mark_started(job)
        job._rc = rc
        job._ended_at = time.monotonic()
        status = JobStatus.FINISHED if rc == 0 else JobStatus.FAILED
        if write:
            if reason:
                try:
                    await job.append_stderr(f"xqute: {reason}")
                except OSError as exc:
                    logger.error("Job %s: could not write its stderr file: %s", job.index, exc)
            await self._write_final(job, rc, status)
        await self._record_usage(job, cause or await self.exit_cause(job, rc))
        job._status = status
        if status == JobStatus.FINISHED:
            logger.debug("Job %s succeeded", job.index)
            await call_async_hook("on_job_succeeded", self, job)
        else:
            logger.warning(
                "Job %s failed (rc %s)%s", job.index, rc, f": {reason}" if reason else ""
            )
            await call_async_hook("on_job_failed", self, job)
        # its meta file paths are built again if asked for: a run of 100,000
        # jobs keeps no 700,000 path objects for jobs long ended
        job.forget_paths()

    async def exit_cause(self, job: Job, rc: int) -> str:
        """How ``job`` ended, from its return code: ``ok``, ``timeout`` (the
        wrapper's ``timeout``, 124), ``killed`` (SIGKILL or SIGTERM), ``failed``,
        or ``unknown`` when no return code was recorded. Backends that can tell
        more (Slurm's TIMEOUT, a memory limit in the job's stderr) override it."""
        if rc == 0:
            return "ok"
        if rc == 124:
            return "timeout"
        if rc in (137, 143):
            return "killed"
        if rc in (RC_VANISHED, RC_SUBMISSION_FAILED):
            return "unknown" if rc == RC_VANISHED else "failed"
        return "failed"

    # Backends whose scheduler keeps accounts of ended jobs (Slurm's sacct,
    # Grid Engine's qacct) set this and implement ``query_usage``: a trial
    # that ended without the status round having fetched its figures
    # (``job_usage`` was empty) gets them in a later round's call. Those still
    # missing when the run ends stay ``pending`` in the record: the run makes
    # no call of its own for them (unless ``usage="wait"``), and
    # ``complete_usage`` (``xqute status --fetch-usage``) fetches them later.
    usage_from_scheduler = False
    # rounds after which a trial's record is left with the wrapper's figures
    USAGE_ROUNDS = 3

    async def query_usage(self, jids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What the scheduler's accounting says the ended jobs ``jids`` used,
        in one call: {jid: figures}, the figures as ``job_usage`` gives them.
        Jobs left out (accounting lags) are asked again in a later round."""
        return {}

    async def query_jobs_and_usage(
        self, jobs: Sequence[Job], ended: Sequence[str]
    ) -> tuple[dict[Job, JobQuery], dict[str, dict[str, Any]]]:
        """One status round: about the live ``jobs`` (``query_jobs``), and
        the usage of the ended jobs ``ended`` (``query_usage``). A backend
        whose one call can answer both overrides this, so that usage costs no
        query of its own."""
        answers = await self.query_jobs(jobs) if jobs else {}
        usage = await self.query_usage(ended) if ended else {}
        return answers, usage

    def job_usage(self, job: Job) -> dict[str, Any]:
        """What the backend measured of ``job``'s last trial, to go into its
        usage record: any of ``wall_s``, ``cpu_s``, ``peak_memory_mb``,
        ``host``, with ``sources`` naming where each came from. Figures here
        win over the wrapper's own. Only what the status rounds already
        fetched: never a call per job."""
        return {}

    async def _record_usage(self, job: Job, cause: str) -> None:
        """Write ``job.usage`` (JSON): the wrapper's measurement, the
        backend's (``job_usage``), the cause and what the trial asked for."""
        job.cause = cause
        if not self.usage:
            return
        record = usage_from_wrapper(await read_meta(job.metadir / USAGE_RAW_FILE))
        extra = self.job_usage(job)
        sources = {**record.pop("sources"), **extra.pop("sources", {})}
        record.update({key: value for key, value in extra.items() if value is not None})
        record.update(
            trial=job.trial_count,
            rc=job._rc,
            cause=cause,
            requested=job.resources.as_dict(),
            sources=sources,
        )
        due = self.usage_from_scheduler and not extra and bool(job.jid)
        if due:  # figures to come from the scheduler's accounting
            record.update(jid=str(job.jid), pending=True)
        job.usage = record
        try:
            await write_meta(job.usage_file, json.dumps(record, sort_keys=True) + "\n")
        except OSError as exc:
            logger.warning("Job %s: could not write its usage record: %s", job.index, exc)
            return
        if due:
            self._usage_due[str(job.jid)] = (job, job.trial_count, 0)

    async def _add_scheduler_usage(self, usage: dict[str, dict[str, Any]]) -> None:
        """Merge the scheduler's figures into the records of the trials they
        are for (kept under ``job.retry/<n>/`` if the job was retried since)."""
        for jid, (job, trial, rounds) in list(self._usage_due.items()):
            figures = usage.get(jid)
            if figures is None:
                if rounds + 1 >= self.USAGE_ROUNDS:
                    del self._usage_due[jid]  # keep the wrapper's figures
                else:
                    self._usage_due[jid] = (job, trial, rounds + 1)
                continue
            del self._usage_due[jid]
            current = job.trial_count == trial
            path = job.usage_file if current else job.retry_dir / str(trial) / "job.usage"
            record = await _merge_usage(path, figures, job.index)
            if current and record is not None:
                job.usage = record

    async def complete_usage(self, indexes: Sequence[int] | None = None) -> int:
        """Fetch, in one call, the scheduler's figures for usage records still
        ``pending``; returns how many records got them.

        Without ``indexes``: the trials of this run still waiting. With
        ``indexes``: those jobs of this workdir, found by their records (all
        their trials), so that a later process can complete an ended run's
        records (``xqute status --fetch-usage``).
        """
        if not self.usage_from_scheduler:
            return 0
        paths: dict[str, tuple[SpecPath, int]] = {}
        if indexes is None:
            for jid, (job, trial, _) in self._usage_due.items():
                current = job.trial_count == trial
                paths[jid] = (job.usage_file if current else job.retry_dir / str(trial) / "job.usage", job.index)
        else:
            for index in indexes:
                job = await self.create_job(index, ["true"])
                path, earlier = job.usage_file, None
                while path is not None:
                    try:
                        record = json.loads(await read_meta(path) or "{}")
                    except ValueError:
                        record = None
                    if not isinstance(record, dict):
                        break
                    if record.get("pending") and record.get("jid"):
                        paths[str(record["jid"])] = (path, index)
                    # earlier trials are under job.retry/<trial>/, down to 0
                    if earlier is None:
                        earlier = record["trial"] if isinstance(record.get("trial"), int) else 0
                    earlier -= 1
                    path = job.retry_dir / str(earlier) / "job.usage" if earlier >= 0 else None
        if not paths:
            return 0
        try:
            usage = await self.query_usage(list(paths))
        except Exception as exc:  # a record short of figures is no failure
            logger.warning("Could not fetch usage from %s: %s", self.name, exc)
            return 0
        done = 0
        for jid, figures in usage.items():
            if jid in paths and await _merge_usage(paths[jid][0], figures, paths[jid][1]) is not None:
                done += 1
                entry = self._usage_due.pop(jid, None)
                if entry is not None and entry[0].trial_count == entry[1]:
                    entry[0].usage = json.loads(await read_meta(paths[jid][0]) or "{}")
        return done

    async def wait_for_usage(self) -> None:
        """At the run's end, with ``usage="wait"``: fetch the figures still
        due (and once more, a moment later, for what accounting had not
        recorded yet). With ``usage=True`` the run makes no such call."""
        if self.usage != "wait":
            return
        await self.complete_usage()
        if self._usage_due:
            await asyncio.sleep(defaults.USAGE_SETTLE)
            await self.complete_usage()
        self._usage_due.clear()

    async def _write_final(self, job: Job, rc: int, status: int) -> None:
        try:
            await job.set_rc(rc)
            await job.set_status(status)
        except OSError as exc:
            logger.error(
                "Job %s: could not record rc %s in %s: %s", job.index, rc, job.metadir, exc
            )

    async def _end_from_files(self, job: Job, status: int | None = None) -> bool:
        """End ``job`` if its meta files say it ended; True if they did.

        ``status``: the status file's value when the caller has just read it.
        """
        if status is None:
            status = await job.read_status_file()
        if not JobStatus.is_final(status):
            return False
        rc = await job.read_rc_file()
        if rc is None:
            # the wrapper writes rc before status, so this is a foreign or broken file
            rc = 0 if status == JobStatus.FINISHED else RC_VANISHED
        await self._mark_ended(job, rc)
        return True

    async def _failed_before_running(self, job: Job) -> bool:
        """Ask a backend that overrides ``job_fails_before_running`` (2.x
        backends do) about a job not started yet; end it if the answer is yes."""
        if type(self).job_fails_before_running is Scheduler.job_fails_before_running:
            return False
        if not await self.job_fails_before_running(job):
            return False
        if not await self._end_from_files(job):
            await self._mark_ended(
                job, RC_VANISHED, "the job failed before its wrapper could run", write=True
            )
        return True

    async def _end_vanished(self, job: Job, query: JobQuery) -> None:
        """The scheduler no longer has ``job``; take its files' word, else fail it."""
        if await self._end_from_files(job):
            return
        reason = query.reason or "the job ended without recording its return code"
        if query.state == JobQuery.ERROR:
            await self.kill_jobs([job])
        await self._mark_ended(job, RC_VANISHED, reason, write=True, cause=query.cause)

    async def submit_job_and_update_status(self, job: Job) -> bool:
        """Submit ``job`` and record it; False when a plugin vetoed it.

        (Jobs an earlier manager left running are found when they are fed, by
        ``adopt_left_running``, and never reach this.)
        """
        ready = await self._prepare_submission(job)
        if ready is False:
            return False
        if ready:
            await self._submit_single(job)
        return True

    async def _prepare_submission(self, job: Job) -> bool | None:
        """``on_job_submitting``, then the job's files for a new trial.

        Returns False when a plugin vetoed the job, None when it cannot be
        submitted (it is failed with rc -2, its hooks fired), True when ready.
        """
        if await call_async_hook("on_job_submitting", self, job) is False:
            logger.info("Job %s: submission skipped by a plugin", job.index)
            return False
        job._submitted_at = time.monotonic()
        try:
            fresh = job._fresh_metadir is job.metadir
            await self._ensure_metadir(job)
            job._fresh_metadir = None  # written in from here on
            if not fresh:
                await job.clean()
            empty = empty_command_reason(job.cmd)
            if empty:
                raise SubmissionError(empty)
            if isinstance(job.metadir.mounted, LocalPath):
                # the wrapper overwrites it in place (see wrapper_meta_functions)
                await job.reserve_rc()
            # written before the job exists, so it can never overwrite RUNNING
            await job.set_status(JobStatus.SUBMITTED)
        except Exception as exc:
            await self._fail_submission([job], exc)
            return None
        return True

    async def _fail_submission(self, jobs: Sequence[Job], exc: BaseException) -> None:
        """Fail ``jobs`` with rc -2 and the reason their submission did not happen."""
        if isinstance(exc, OSError):
            reason = "cannot prepare the job in {metadir}: " + str(exc)
        elif isinstance(exc, SubmissionError):
            reason = f"submission to {self.name} failed: {exc}"
        else:  # a broken backend must not bring the run down silently
            logger.error("Submission to %s raised", self.name, exc_info=exc)
            reason = f"submission to {self.name} raised {type(exc).__name__}: {exc}"
        for job in jobs:
            await self._mark_ended(
                job, RC_SUBMISSION_FAILED, reason.replace("{metadir}", str(job.metadir)), write=True
            )

    async def _submit_single(self, job: Job) -> None:
        try:
            jid = await self._submit_with_retries(job)
        except Exception as exc:
            await self._fail_submission([job], exc)
            return
        await self._record_submitted(job, jid)
        self.reset_pace()

    async def _record_submitted(self, job: Job, jid: Any) -> None:
        await self._write_jid(job, jid)
        await call_async_hook("on_job_submitted", self, job)

    @staticmethod
    async def _write_jid(job: Job, jid: Any) -> None:
        try:
            await job.set_jid(jid)
        except OSError as exc:  # the job runs: keep following it by the id in memory
            job._jid = str(jid)
            logger.warning("Job %s: could not write its jid file: %s", job.index, exc)
        logger.debug("Job %s submitted as %s", job.index, jid)

    async def _submit_with_retries(self, job: Job) -> Any:
        return await self._retry_submission(
            [job], lambda: self.submit_job(job), lambda ran: self.find_submitted(job, ran)
        )

    async def _retry_submission(
        self,
        jobs: Sequence[Job],
        submit: Callable[[], Awaitable[Any]],
        find: Callable[[bool], Awaitable[Any]],
        retry_refusals: bool = True,
    ) -> Any:
        """Run ``submit`` (one job or one array), retrying transient refusals
        with backoff (unless ``retry_refusals`` is False: the caller splits
        the array instead); after a lost reply, ``find`` says whether it got
        there."""
        label = f"Job {jobs[0].index}" if len(jobs) == 1 else f"An array of {len(jobs)} jobs"
        delay = 1.0
        lost_reply = False
        for attempt in range(1, self.submit_retries + 1):
            if lost_reply:  # the last attempt may have gone through after all
                try:
                    found = await self._find_lost_submission(jobs, find)
                except SubmissionError as exc:
                    # could not tell whether it got there: look again later,
                    # never submit again blind
                    if not exc.transient or attempt == self.submit_retries:
                        raise
                    logger.warning("%s: %s; looking again in %.0f s", label, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
                    continue
                if found is not None:
                    return found
            if self._submit_lock is not None:
                async with self._submit_lock:
                    wait = self._next_submit_at - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._next_submit_at = time.monotonic() + self._min_submit_gap
            try:
                return await submit()
            except SubmissionError as exc:
                lost_reply = exc.ambiguous
                if not exc.transient or attempt == self.submit_retries or not (
                    retry_refusals or lost_reply
                ):
                    if lost_reply:
                        found = await self._find_lost_submission(jobs, find)
                        if found is not None:
                            return found
                    raise
                logger.warning(
                    "%s: %s refused the submission for now (%s); retrying in %.0f s",
                    label, self.name, exc, delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        raise SubmissionError("no submission attempt was made")  # pragma: no cover

    async def _find_lost_submission(
        self, jobs: Sequence[Job], find: Callable[[bool], Awaitable[Any]]
    ) -> Any:
        """The one recovery path for a lost submission reply: ask the backend
        whether the job (or array) got there; refuse to submit again one that
        has run."""
        ran = False
        for job in jobs:
            if await job.read_status_file() not in (None, JobStatus.SUBMITTED):
                ran = True
                break
        try:
            found = await find(ran)
        except SubmissionError as exc:
            # ambiguous: whoever catches this must not submit the jobs again
            raise SubmissionError(
                f"the reply to a submission was lost, and looking for the job failed: {exc}",
                transient=exc.transient,
                ambiguous=True,
            ) from exc
        if found is not None:
            logger.info("Job %s: the submission went through after all (%s)", jobs[0].index, found)
            return found
        if ran:
            raise SubmissionError(
                f"the reply to a submission was lost and the job has run already (its "
                f"wrapper wrote its status file), but {self.name} has no record of it: "
                "not submitting it again"
            )
        return None

    # ------------------------------------------------------------------ arrays
    @property
    def arrays_enabled(self) -> bool:
        """Whether bursts of jobs go to the scheduler as arrays: the backend
        implements ``submit_array`` and the ``array`` option is not False."""
        return self.array and type(self).submit_array is not Scheduler.submit_array

    async def submit_burst(self, jobs: Sequence[Job], room: int) -> tuple[dict[Job, bool], list[Job]]:
        """Submit queued ``jobs`` as arrays, at most ``room`` of them running at
        once (each array's throttle; several arrays share ``room``).

        Every member keeps its own hooks, in the order a single submission
        fires them: ``on_job_submitting`` for each (a veto leaves the job out),
        one submission per array, then ``on_job_submitted`` for each. Past the
        backend's ``max_array_size`` the jobs are split into several arrays; when
        there are more arrays than ``room``, the rest are returned for later.

        Returns {job: False if vetoed, else True} for the jobs taken, and the
        jobs left for later.
        """
        limit = max(1, int(await self.max_array_size()))
        room = max(1, room)
        taken = list(jobs[: limit * room])
        later = list(jobs[limit * room :])
        went: dict[Job, bool] = {}
        ready: list[Job] = []
        for job in taken:
            result = await self._prepare_submission(job)
            went[job] = result is not False
            if result:
                ready.append(job)
        # members of one array share its directives: one array per request
        by_request: dict[Resources, list[Job]] = {}
        for job in ready:
            by_request.setdefault(job.resources, []).append(job)
        groups = [
            same[i : i + limit] for same in by_request.values() for i in range(0, len(same), limit)
        ]
        # the throttle: ``room`` shared out, the first arrays get the remainder
        share, extra = divmod(room, max(1, len(groups)))
        await asyncio.gather(
            *(
                self._submit_group(group, share + (1 if i < extra else 0))
                for i, group in enumerate(groups)
            )
        )
        if ready:
            self.reset_pace()
        return went, later

    async def _submit_group(self, jobs: list[Job], throttle: int) -> None:
        if len(jobs) == 1:  # an array of one is a job like any other
            await self._submit_single(jobs[0])
            return
        try:
            jids = await self._retry_submission(
                jobs,
                lambda: self.submit_array(jobs, throttle),
                lambda ran: self.find_submitted_array(jobs, ran),
                retry_refusals=False,
            )
            if len(jids) != len(jobs):
                raise SubmissionError(
                    f"{self.name} returned {len(jids)} job ids for an array of {len(jobs)} jobs"
                )
        except SubmissionError as exc:
            if not (exc.transient and not exc.ambiguous):
                await self._fail_submission(jobs, exc)
                return
            # refused for now (a per-user submit limit an array of this size
            # may never fit in, a busy controller): halves, down to single
            # jobs, which retry with backoff
            logger.info(
                "%s refused an array of %s jobs for now (%s); submitting it in halves",
                self.name, len(jobs), exc,
            )
            half = len(jobs) // 2
            first_share = max(1, (throttle + 1) // 2)
            await self._submit_group(jobs[:half], first_share)
            await self._submit_group(jobs[half:], max(1, throttle - first_share))
            return
        except Exception as exc:
            await self._fail_submission(jobs, exc)
            return
        logger.debug(
            "Jobs %s..%s submitted as one array (%s members)", jobs[0].index, jobs[-1].index, len(jobs)
        )
        # every member's jid file at once, so that a manager killed now leaves
        # as few members as possible that a rerun must look for by name
        await asyncio.gather(*(self._write_jid(job, jid) for job, jid in zip(jobs, jids)))
        for job in jobs:
            await call_async_hook("on_job_submitted", self, job)

    def raw_option_wins(self, resource: str, option: str) -> None:
        """A raw directive ``option`` the user gave overrides ``resources``'
        ``resource``: say so, once per pair, as a warning."""
        key = f"{resource}/{option}"
        if key not in self._warned_conflicts:
            self._warned_conflicts.add(key)
            logger.warning(
                "%s scheduler: the option %r overrides resources[%r]; the raw option wins",
                self.name, option, resource,
            )

    def array_name(self, jobs: Sequence[Job]) -> str:
        """``<prefix>-<hash of workdir>-<first index>-a<hash of members>``: the
        scheduler's name of an array, unique per set of members and trials (so
        a lost reply is looked for under a name no other array has)."""
        members = ",".join(f"{job.index}.{job.trial_count}" for job in jobs)
        digest = hashlib.sha256(members.encode()).hexdigest()[:6]
        return f"{self.job_name(jobs[0])}-a{digest}"

    def dispatched_task(self, dispatch: str, job: Job) -> int | None:
        """The task id under which ``dispatch`` (the text ``array_dispatch``
        made) runs ``job``, or None: how a rerun finds an array member whose
        manager was killed before it wrote the member's jid file."""
        arm = f") exec {defaults.JOBCMD_WRAPPER_LANG} "
        wanted = shell_quote(job.metadir.mounted / self.wrapped_script_name) + " ;;"
        for line in dispatch.splitlines():
            task, sep, rest = line.strip().partition(arm)
            if sep and rest == wanted and task.isdigit():
                return int(task)
        return None

    def array_dispatch(self, jobs: Sequence[Job], task_var: str, first_task: int) -> str:
        """Bash text that runs the member of the current task: ``jobs[i]`` is
        task ``first_task + i``, read from ``$task_var``; its own wrapper is
        exec'd, so it runs exactly as a job submitted alone."""
        lines = [f'case "${{{task_var}:-}}" in']
        for task, job in enumerate(jobs, start=first_task):
            wrapper = job.metadir.mounted / self.wrapped_script_name
            lines.append(f"    {task}) exec {defaults.JOBCMD_WRAPPER_LANG} {shell_quote(wrapper)} ;;")
        lines.append(
            f'    *) echo "xqute: no job for array task ${{{task_var}:-}}" >&2; exit 1 ;;'
        )
        lines.append("esac")
        return "\n".join(lines)

    async def adopt_left_running(self, jobs: Sequence[Job]) -> list[Job]:
        """Those of ``jobs`` (just fed) that an earlier manager of the same
        workdir left queued or running in the scheduler, say one that was
        killed. They are followed from now on (SUBMITTED, ``on_job_submitted``)
        and never started a second time; one scheduler question covers them all.

        A job is a candidate when its status file says SUBMITTED or RUNNING and
        its jid file names a job; the scheduler must still have that job.
        """
        with_jid = await job_folders_with(
            self.workdir,
            "job.jid",
            (job.index for job in jobs),
            8 * (1 + max((job.index for job in jobs), default=0)),
        )
        candidates = []
        for job in jobs:
            if job._fresh_metadir is job.metadir:
                continue  # made by this run: no earlier run left anything in it
            if with_jid is not None and job.index not in with_jid:
                # a cloud workdir: one listing instead of a read per job (a
                # manager killed before writing the jid file is not looked for)
                continue
            if await job.read_status_file() not in (JobStatus.SUBMITTED, JobStatus.RUNNING):
                continue
            if await job.get_jid():
                candidates.append(job)
                continue
            # killed between the submission and the jid file: look by name
            jid = await self.find_submitted(job, False)
            if jid is not None:
                await job.set_jid(jid)
                candidates.append(job)
        if not candidates:
            return []
        answers = await self.query_jobs(candidates)
        adopted = []
        for job in candidates:
            answer = answers.get(job)
            if answer is not None and not answer.alive:
                # gone: it may have ended between the file read and the
                # question; then its own record is its result (the first
                # round reads it), else it runs anew when its turn comes
                if not JobStatus.is_final(await job.read_status_file()):
                    job._jid = None
                    continue
            # alive, or the scheduler did not answer (a failed query): follow
            # it rather than risk a second copy; the status rounds settle it
            logger.info(
                "Job %s is %s as %s from an earlier run; following it",
                job.index,
                "still running" if answer is not None else "perhaps running",
                job._jid,
            )
            job._status = JobStatus.SUBMITTED
            job._submitted_at = time.monotonic()
            await call_async_hook("on_job_submitted", self, job)
            adopted.append(job)
        if adopted:
            self.reset_pace()
        return adopted

    async def queue_job(self, job: Job) -> None:
        """A job enters the run: ``on_job_init``, then QUEUED and ``on_job_queued``."""
        if not getattr(job, "resources", None):
            job.resources = self.resources
        await call_async_hook("on_job_init", self, job)
        job._status = JobStatus.QUEUED
        await call_async_hook("on_job_queued", self, job)

    async def after_failure(self, job: Job) -> str:
        """Decide what a failed ``job`` leads to, under the error strategy:
        ``"retry"`` (it was requeued: its trial's files kept, QUEUED again),
        ``"halt"`` (the run must stop) or ``"ignore"``."""
        if job._error_retry and job.trial_count < (job._num_retries or 0):
            if await self._escalate(job):
                await self.retry_job(job)
                return JobErrorStrategy.RETRY
        if self.error_strategy == JobErrorStrategy.HALT:
            return JobErrorStrategy.HALT
        return JobErrorStrategy.IGNORE

    async def _escalate(self, job: Job) -> bool:
        """Apply the retry policy for the cause of ``job``'s failure to what its
        next trial asks for; False (with a line in its stderr) when that would
        pass ``resource_limits``: the job is not retried."""
        change = self.retry_policy.get(getattr(job, "cause", "") or "")
        if not change:
            return True
        asked = job.resources.scaled(
            memory=float(change.get("memory", 1.0)), time=float(change.get("time", 1.0))
        )
        if change.get("exclude_node"):
            # the host the failed trial ran on, as its usage record names it
            asked = asked.excluding(str((job.usage or {}).get("host") or ""))
        over = asked.over(self.resource_limits)
        if over:
            message = (
                f"not retried: after {job.cause}, the next trial would ask for {over} "
                "(resource_limits)"
            )
            logger.warning("Job %s %s", job.index, message)
            try:
                await job.append_stderr(f"xqute: {message}")
            except OSError:
                pass
            return False
        if asked != job.resources:
            logger.info(
                "Job %s: after %s, the next trial asks for %s", job.index, job.cause, asked.as_dict()
            )
            job.resources = asked
        return True

    async def retry_job(self, job: Job) -> None:
        """Keep the failed trial's files in ``job.retry/<trial>/`` and requeue."""
        await job.clean(retry=True)
        job.trial_count += 1
        job._status = JobStatus.QUEUED
        logger.info("Job %s: retrying (trial %s of %s)", job.index, job.trial_count + 1, (job._num_retries or 0) + 1)
        await call_async_hook("on_job_queued", self, job)

    async def kill_left_running(self, indexes: Sequence[int]) -> tuple[list[int], list[int]]:
        """Kill the jobs ``indexes`` of this workdir that a manager left going,
        known by their files (jid and status): those the scheduler still has
        are killed through ``kill_running_jobs`` (recorded as failed).

        Returns the indexes killed and those the scheduler says are not
        running; the latter are left as they are (a job the scheduler cannot
        see from here, on another host, may still run). Used by ``xqute kill``.
        """
        jobs = []
        for index in indexes:
            job = await self.create_job(index, ["true"])
            await job.get_jid()
            await job.get_status(refresh=True)
            jobs.append(job)
        answers = await self.query_jobs(jobs)
        live = [job for job, answer in answers.items() if answer.alive]
        if live:
            await self.kill_running_jobs(live)
        gone = [job.index for job, answer in answers.items() if not answer.alive]
        return sorted(job.index for job in live), sorted(gone)

    async def kill_running_jobs(self, jobs: Iterable[Job]) -> None:
        """Kill ``jobs`` (those a plugin does not veto) and record them as failed."""
        to_kill = []
        for job in jobs:
            if JobStatus.is_final(job._status):  # it ended meanwhile: nothing to kill
                continue
            if await call_async_hook("on_job_killing", self, job) is False:
                continue
            job._status = JobStatus.KILLING
            to_kill.append(job)
        if not to_kill:
            return
        try:
            await self.kill_jobs(to_kill)
        except Exception:  # keep going: the rest must still be recorded
            logger.exception("Killing jobs through %s failed", self.name)
        for job in to_kill:
            await self._mark_killed(job)

    async def _mark_killed(self, job: Job) -> None:
        """Record that xqute killed ``job``: FAILED, with the wrapper's rc when
        it wrote one (else -3 and a line in its stderr), then ``on_job_killed``."""
        # no longer followed: a grace it was in must not keep pacing the queries
        self._ended_since.pop(job, None)
        rc = await job.read_rc_file()
        if rc is None:
            rc = RC_VANISHED
            try:
                await job.append_stderr("xqute: the job was killed by xqute")
            except OSError:
                pass
            await self._write_final(job, rc, JobStatus.FAILED)
        elif not JobStatus.is_final(await job.read_status_file()):
            # the rc landed but not the status after it (a copy from a cloud
            # VM cut short by the kill): finish the record the wrapper began
            await self._write_final(job, rc, JobStatus.FAILED)
        job._rc = rc
        job._status = JobStatus.FAILED
        job._ended_at = time.monotonic()
        await self._record_usage(job, "killed")
        logger.debug("Job %s killed", job.index)
        await call_async_hook("on_job_killed", self, job)

    # ------------------------------------------------------------ status rounds
    def reset_pace(self) -> None:
        """Something changed (a submission): read the files again soon, and let
        the scheduler be asked at the shortest ``query_interval`` again."""
        self._interval = self.poll_interval
        self._next_round_at = min(self._next_round_at, time.monotonic() + self.poll_interval)
        self._query_gap = self.query_interval

    def round_delay(self) -> float:
        """Seconds until the next status round is due (0: now)."""
        return max(0.0, self._next_round_at - time.monotonic())

    async def refresh_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        """One status round over the active ``jobs``; returns those that ended.

        Polled backends: the meta files answer first, and only the jobs they leave
        open are put to the scheduler, in one ``query_jobs`` call. Event-driven
        backends know in memory which jobs changed, so they are asked first and the
        files are read only for jobs that ended.
        """
        ended: list[Job] = []
        if self.event_driven:
            answers = await self.query_jobs(jobs)
            for job, answer in answers.items():
                if answer.state == JobQuery.RUNNING:
                    await self._mark_started(job)
                elif not answer.alive:
                    await self._end_vanished(job, answer)
                    ended.append(job)
            return ended

        open_jobs = []
        # a job seen to start is a change too: its end is near, keep rounds short
        started_from_files = False
        # a cloud workdir: one listing says which jobs have an rc file (the
        # wrapper writes it before the final status), instead of a read per job
        with_rc = await job_folders_with(
            self.workdir,
            "job.rc",
            (job.index for job in jobs),
            8 * (1 + max((j.index for j in jobs), default=0))
            * (1 + max((j.trial_count for j in jobs), default=0)),
        )
        for job in jobs:
            if with_rc is not None and job.index not in with_rc:
                open_jobs.append(job)
                continue
            status = await job.read_status_file()
            if await self._end_from_files(job, status):
                ended.append(job)
                continue
            if status == JobStatus.RUNNING and not job._started:
                started_from_files = True
                await self._mark_started(job)
            if not job._started and await self._failed_before_running(job):
                ended.append(job)
                continue
            open_jobs.append(job)
        for job in ended:
            self._ended_since.pop(job, None)
        changed = bool(ended) or started_from_files
        now = time.monotonic()
        if open_jobs and now >= self._next_query_at:
            queried_changed, gone = await self._query_round(open_jobs, now)
            changed = changed or queried_changed
            ended.extend(gone)
        # pace: back off while nothing changes, so an idle cluster is asked rarely
        if changed:
            self._interval = self.poll_interval
        else:
            self._interval = min(self._interval * defaults.POLL_BACKOFF, self.poll_interval_max)
        self._next_round_at = time.monotonic() + self._interval
        return ended

    async def _query_round(self, jobs: list[Job], now: float) -> tuple[bool, list[Job]]:
        """Ask the scheduler about ``jobs`` (one ``query_jobs`` call) and act on
        the answers; returns (whether anything changed, the jobs that ended).

        A job the scheduler says ended, whose files do not show it yet, gets
        ``end_grace`` seconds for them to (a shared file system lags); its
        latest answer decides after that. The next question comes at least
        ``query_interval`` later, less often while the answers do not change,
        and not much after a grace runs out.
        """
        self.query_rounds += 1
        if self._usage_due:
            answers, usage = await self.query_jobs_and_usage(jobs, list(self._usage_due))
            await self._add_scheduler_usage(usage)
        else:
            answers = await self.query_jobs(jobs)
        changed = False
        gone: list[Job] = []
        for job, answer in answers.items():
            if answer.alive:
                self._ended_since.pop(job, None)
                if answer.state == JobQuery.RUNNING and not job._started:
                    changed = True
                    await self._mark_started(job)
                continue
            since = self._ended_since.setdefault(job, now)
            if now - since < self.end_grace and answer.state != JobQuery.ERROR:
                continue
            del self._ended_since[job]
            changed = True
            await self._end_vanished(job, answer)
            gone.append(job)
        if changed:
            self._query_gap = self.query_interval
        else:
            self._query_gap = min(self._query_gap * defaults.POLL_BACKOFF, self.query_interval_max)
        self._next_query_at = time.monotonic() + self._query_gap
        if self._ended_since:
            due = min(self._ended_since.values()) + self.end_grace
            self._next_query_at = min(self._next_query_at, max(due, now + self.query_interval))
        return changed, gone


async def _merge_usage(path: SpecPath, figures: dict[str, Any], index: int) -> dict[str, Any] | None:
    """Merge a scheduler's ``figures`` into the usage record at ``path``; the
    record written, or None when it could not be."""
    try:
        record = json.loads(await read_meta(path) or "{}")
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        record = {}
    figures = dict(figures)
    record.setdefault("sources", {}).update(figures.pop("sources", {}))
    record.update({key: value for key, value in figures.items() if value is not None})
    record.pop("pending", None)
    try:
        await write_meta(path, json.dumps(record, sort_keys=True) + "\n")
    except OSError as exc:
        logger.warning("Job %s: could not update its usage record: %s", index, exc)
        return None
    return record
