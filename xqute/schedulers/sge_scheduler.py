"""Run jobs on Grid Engine (Son of Grid Engine 8.x, Open Grid Scheduler, UGE).

Each job is its wrapper script submitted with ``qsub``; the scheduler's own
options become ``#$`` directive lines at the top of that script. Status comes
from the job's meta files first; the jobs those leave open are put to Grid
Engine in one ``qstat -xml`` call per status round (the base class paces the
rounds and backs off while nothing changes). A job that leaves ``qstat``
without having written its return code is looked up in ``qacct`` so the
reason (exit status, ``failed`` code) lands in its stderr file.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import shutil
import time
import xml.etree.ElementTree as ET
from typing import Any, Sequence

from ..defaults import JOBCMD_WRAPPER_LANG, JobStatus
from ..directives import render_directives
from ..job import Job
from ..scheduler import JobQuery, Scheduler, SubmissionError
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

# Meaning of qacct's ``failed`` codes that matter here (the rest are printed
# by qacct itself, after the number).
_QDEL_FAILED = "100"
# Job numbers given to one qdel call at most.
_QDEL_MAX_IDS = 500


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
    a rescheduled job has one record per run)."""
    records: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("====="):
            if "jobnumber" in current:
                records[current["jobnumber"]] = current
            current = {}
            continue
        key, _, value = line.partition(" ")
        if key:
            current[key] = value.strip()
    if "jobnumber" in current:
        records[current["jobnumber"]] = current
    return records


def _parse_error_reasons(text: str) -> dict[str, str]:
    """``qstat -j ID,ID`` output as {job number: its error reason lines}."""
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
    return {jid: "; ".join(lines) for jid, lines in reasons.items() if lines}


class SgeScheduler(Scheduler):
    """Submit jobs to Grid Engine with ``qsub``.

    Args:
        qsub, qstat, qdel, qacct: the Grid Engine commands (names on PATH or
            paths).
        qacct_wait: seconds to keep looking in ``qacct`` for a job that left
            ``qstat`` without writing its return code (accounting can lag
            behind by its ``flush_time``) before failing it without a reason
            (the base class's ``end_grace``; 20). Grid Engine is asked at most
            every ``query_interval`` seconds (5), ``qstat`` and, while such a
            job waits, ``qacct``: one call each per round.
        kill_wait: seconds ``kill_jobs`` waits for deleted jobs to leave
            ``qstat``, so nothing is left running when a run ends.
        command_timeout: seconds any one Grid Engine command may take.
        **kwargs: the base Scheduler's options; every other key becomes a
            ``#$`` directive: ``True`` a bare flag (``notify=True`` ->
            ``#$ -notify``), a list repeats the flag (``l=["h_rt=60",
            "h_vmem=1G"]``), anything else ``-key value``; ``None``/``False``
            leave the flag out. ``N``, ``o``, ``e``, ``S``, ``wd``/``cwd``
            replace the ones xqute sets.

    Jobs are named ``<prefix>-<short hash of workdir>-<index>``; ``-wd`` is the
    scheduler's ``cwd`` when given, else ``-cwd``; Grid Engine's own output
    files (anything the wrapper prints outside the command) go into the job's
    metadir as ``job.sge.stdout`` / ``job.sge.stderr``.
    """

    name = "sge"
    default_query_interval = 5.0
    default_end_grace = 20.0
    required_binaries = ("qsub", "qstat", "qdel")
    # qdel SIGKILLs the job's process group (unless the cluster enables
    # ENABLE_ADDGRP_KILL): the command must stay in the wrapper's group.
    wrapper_own_process_group = False

    def __init__(
        self,
        *args: Any,
        qsub: str = "qsub",
        qstat: str = "qstat",
        qdel: str = "qdel",
        qacct: str = "qacct",
        qacct_wait: float | None = None,
        kill_wait: float = 15.0,
        command_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        if qacct_wait is not None:
            kwargs.setdefault("end_grace", qacct_wait)
        super().__init__(*args, **kwargs)
        self.qsub = str(qsub)
        self.qstat = str(qstat)
        self.qdel = str(qdel)
        self.qacct = str(qacct)
        self.qacct_wait = self.end_grace
        self.kill_wait = float(kill_wait)
        self.command_timeout = float(command_timeout)
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

    def jobcmd_shebang(self, job: Job) -> str:
        """The shebang, then xqute's directives, then the user's."""
        meta = job.metadir.mounted
        lines = [f"#!{JOBCMD_WRAPPER_LANG}"]
        if not self._given("N"):
            lines.append(f"#$ -N {self.job_name(job)}")
        # the wrapper is bash whatever the queue's shell_start_mode says
        if not self._given("S"):
            lines.append(f"#$ -S {JOBCMD_WRAPPER_LANG}")
        if not (self._given("wd") or self._given("cwd")):
            if self.cwd:
                lines.append(f"#$ -wd {_directive_path(self.cwd, 'wd')}")
            else:
                lines.append("#$ -cwd")
        if not self._given("o"):
            lines.append(f"#$ -o {_directive_path(meta / 'job.sge.stdout', 'o')}")
        if not self._given("e"):
            lines.append(f"#$ -e {_directive_path(meta / 'job.sge.stderr', 'e')}")
        lines.extend(self._render_user_directives())
        return "\n".join(lines)

    # ------------------------------------------------------------ submitting
    async def submit_job(self, job: Job) -> str:
        script = await self.wrapped_job_script(job)
        # the job's folder is set by -wd/-cwd in the script, not by qsub's cwd
        result = await run_command(self.qsub, "-terse", str(script), timeout=self.command_timeout)
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

    async def find_submitted(self, job: Job, ran: bool) -> str | None:
        """The Grid Engine job of ``job``'s name that ``qstat`` lists; when its
        wrapper has run, the latest of that name in ``qacct``."""
        # (with a user-chosen -N all jobs share it: then nothing is found, and
        # the job is submitted again rather than mistaken for another)
        name = self.job_name(job)
        jid = await self._find_by_name(name)
        if jid is None and ran:
            jid = await self._find_in_accounting(name)
        return jid

    async def _find_in_accounting(self, name: str) -> str | None:
        """The latest finished job named ``name``, from qacct."""
        if shutil.which(self.qacct) is None:
            return None
        result = await run_command(self.qacct, "-j", name, timeout=self.command_timeout)
        if not result.ok:
            return None
        numbers = [jid for jid in _parse_qacct(result.stdout) if _JOB_NUMBER_RE.fullmatch(jid)]
        return max(numbers, key=int) if numbers else None

    async def _find_by_name(self, name: str) -> str | None:
        states = await self._qstat_states()
        if states is None:
            return None
        for jid, (job_name, _) in states.items():
            if job_name == name:
                return jid
        return None

    # ------------------------------------------------------------ asking
    async def _qstat_states(self) -> dict[str, tuple[str, str]] | None:
        """{job number: (name, state)} of this user's jobs, from one ``qstat -xml``
        call; None when qstat failed (then nothing is concluded this round)."""
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
        states: dict[str, tuple[str, str]] = {}
        for entry in root.iter("job_list"):
            jid = (entry.findtext("JB_job_number") or "").strip()
            if not jid:
                continue
            name = (entry.findtext("JB_name") or "").strip()
            state = (entry.findtext("state") or "").strip()
            # an array job appears once per task: keep the most advanced state
            if jid in states and set(states[jid][1]) & _RUNNING_LETTERS:
                continue
            states[jid] = (name, state)
        return states

    async def query_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobQuery]:
        """One ``qstat -xml`` for all ``jobs``; ``qstat -j`` only for jobs in an
        error state and ``qacct`` only for jobs that vanished without an rc file."""
        asked = [job for job in jobs if job.jid]
        if not asked:
            return {}
        states = await self._qstat_states()
        if states is None:
            return {}
        answers: dict[Job, JobQuery] = {}
        in_error: list[Job] = []
        vanished: list[Job] = []
        for job in asked:
            entry = states.get(job.jid)  # type: ignore[arg-type]
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
        if vanished:
            answers.update(await self._vanished_answers(vanished))
        return answers

    def _is_ours(self, job: Job, name: str) -> bool:
        """Job numbers restart when a cluster is re-created: a number is only
        taken as this job's when the name matches too."""
        return name == (self._user_name or self.job_name(job))

    async def _error_answers(self, jobs: list[Job]) -> dict[Job, JobQuery]:
        jids = ",".join(job.jid for job in jobs)  # type: ignore[misc]
        result = await run_command(self.qstat, "-j", jids, timeout=self.command_timeout)
        reasons = _parse_error_reasons(result.stdout) if result.ok else {}
        return {
            job: JobQuery(
                JobQuery.ERROR,
                f"Grid Engine put job {job.jid} in an error state (Eqw)"
                + (f": {reasons[job.jid]}" if job.jid in reasons else ""),
            )
            for job in jobs
        }

    async def _vanished_answers(self, jobs: list[Job]) -> dict[Job, JobQuery]:
        """Jobs Grid Engine no longer lists: ended. The reason is qacct's when it
        has a record; accounting can lag, so the base class keeps asking (each
        query round) for ``end_grace`` seconds before taking "no record"."""
        answers: dict[Job, JobQuery] = {}
        unexplained = []
        for job in jobs:
            if await job.read_rc_file() is not None:
                answers[job] = JobQuery(JobQuery.ENDED)
            else:
                unexplained.append(job)
        if not unexplained:
            return answers
        records = await self._accounting(unexplained)
        for job in unexplained:
            jid: str = job.jid  # type: ignore[assignment]
            record = records.get(jid)
            if record is not None and record.get("jobname") not in (
                None, self._user_name or self.job_name(job)
            ):
                record = None  # a job of an earlier cluster with the same number
            if record is not None:
                answers[job] = JobQuery(JobQuery.ENDED, self._accounting_reason(jid, record))
            else:
                answers[job] = JobQuery(
                    JobQuery.ENDED,
                    f"Grid Engine job {jid} is gone without recording its return code and "
                    f"{self.qacct} has no record of it (deleted before it started?)",
                )
        return answers

    async def _accounting(self, jobs: list[Job]) -> dict[str, dict[str, str]]:
        """qacct records of ``jobs`` in one call: by number for one job, by the
        workdir's job-name pattern for several (qacct takes one -j)."""
        if shutil.which(self.qacct) is None:
            return {}
        if len(jobs) == 1:
            target = jobs[0].jid
        elif self._user_name:
            target = self._user_name
        else:
            # every default name of this workdir: <prefix>-<hash>-*
            target = self.job_name(jobs[0]).rsplit("-", 1)[0] + "-*"
        result = await run_command(self.qacct, "-j", str(target), timeout=self.command_timeout)
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
    async def kill_jobs(self, jobs: Sequence[Job]) -> None:
        """``qdel`` all ``jobs`` in one call (a few for thousands), then wait
        up to ``kill_wait`` seconds for them to leave ``qstat``."""
        jids = [job.jid for job in jobs if job.jid]
        if not jids:
            return
        for chunk in chunks(jids, _QDEL_MAX_IDS):
            result = await run_command(self.qdel, *chunk, timeout=self.command_timeout)
            if not result.ok:
                # "does not exist" for jobs that ended meanwhile is expected
                other = [
                    line for line in (result.stdout + result.stderr).splitlines()
                    if line.strip() and "does not exist" not in line
                    and "registered" not in line and "has deleted" not in line
                ]
                if other:
                    logger.warning("sge scheduler: %s: %s", self.qdel, "; ".join(other))
        deadline = time.monotonic() + self.kill_wait
        pending = set(jids)
        delay = 0.25
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            states = await self._qstat_states()
            if states is not None:
                pending &= set(states)
            delay = min(delay * 1.5, 2.0)
        if pending:
            logger.warning(
                "sge scheduler: jobs %s were still listed by %s %.0f s after qdel",
                ", ".join(sorted(pending)), self.qstat, self.kill_wait,
            )
