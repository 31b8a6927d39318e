"""A job: one command, its environment, and the meta files in its own folder."""

from __future__ import annotations

import errno

import json
import os
import shutil
from typing import Any, Mapping

from panpath import LocalPath

from .defaults import JobStatus
from .path import SpecPath, overwrite_in_place, read_meta, write_meta
from .resources import Resources
from .utils import CommandType, check_env_name, check_no_nul, normalize_cmd


# The rc a reader gets when none was recorded (2.x's get_rc() gives it too),
# and the rc file's text before the wrapper records the real one.
RC_UNKNOWN = -9
RC_PLACEHOLDER = f"{RC_UNKNOWN:<8}\n"


def parse_meta_int(text: str | None) -> int | None:
    """An integer from a meta file's text; None for missing, empty or garbage."""
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > 20:
        return None
    try:
        return int(text)
    except ValueError:
        return None


_STATUS_VALUES = frozenset(
    value for name, value in vars(JobStatus).items() if name.isupper() and isinstance(value, int)
)


class Job:
    """One command to run.

    Attributes:
        index: position among the jobs of the run (also the metadir's name).
        cmd: the command as a tuple of arguments.
        envs: environment variables exported for the command.
        metadir: ``workdir / str(index)``, holding the meta files.
        trial_count: how many earlier trials failed and were retried.
    """

    __slots__ = (
        "index",
        "_cmd",
        "workdir",
        "metadir",
        "envs",
        "trial_count",
        "_error_retry",
        "_num_retries",
        "_status",
        "_rc",
        "_jid",
        "_started",
        "_submitted_at",
        "_ended_at",
        "resources",
        "_paths",
        "cause",
        "usage",
        "_fresh_metadir",
    )

    def __init__(
        self,
        index: int,
        cmd: CommandType,
        workdir: Any,
        error_retry: bool | None = None,
        num_retries: int | None = None,
        envs: Mapping[str, Any] | None = None,
    ) -> None:
        self.index = index
        self.cmd = cmd  # type: ignore[assignment]
        self.workdir = workdir if isinstance(workdir, SpecPath) else SpecPath(workdir)
        self.metadir = self.workdir / str(index)
        self.envs: dict[str, Any] = {}
        self.update_envs(envs)
        self.envs["XQUTE_JOB_INDEX"] = str(index)
        self.envs["XQUTE_METADIR"] = str(self.workdir.mounted)
        self.envs["XQUTE_JOB_METADIR"] = str(self.metadir.mounted)
        self.trial_count = 0
        self._error_retry = error_retry
        self._num_retries = num_retries
        self._status = JobStatus.INIT
        self._rc: int | None = None
        self._jid: str | None = None
        # whether on_job_started was fired for the current trial
        self._started = False
        self._submitted_at: float | None = None
        self._ended_at: float | None = None
        # what the current trial asks for (the scheduler's ``resources`` when
        # the job is queued; more after an out-of-memory or time-out failure)
        self.resources = Resources()
        # meta file paths, built once per metadir (a status round reads
        # thousands of them)
        self._paths: dict[str, SpecPath] = {}
        # how the last trial ended (xqute.resources.EXIT_CAUSES), once it did
        self.cause = ""
        # the usage record of the last trial that ended (as in ``job.usage``)
        self.usage: dict[str, Any] | None = None
        # the metadir this run made for it, until its first submission writes
        # in it: nothing of an earlier run can be there (no earlier job to look
        # for), and nothing to clean
        self._fresh_metadir: SpecPath | None = None

    # -- command and environment ---------------------------------------------
    @property
    def cmd(self) -> tuple[str, ...]:
        """The command as a tuple of arguments; set it to a string (split like
        a shell does) or a list of arguments."""
        return self._cmd

    @cmd.setter
    def cmd(self, value: CommandType) -> None:
        self._cmd = normalize_cmd(value)

    def update_envs(self, envs: Mapping[str, Any] | None) -> None:
        """Merge ``envs``, refusing names bash cannot export and NUL in values."""
        for name, value in (envs or {}).items():
            check_env_name(name)
            check_no_nul(str(value), f"Value of environment variable {name}")
            self.envs[name] = value

    def __repr__(self) -> str:
        return f"<Job-{self.index}: {' '.join(self._cmd)!r} [{JobStatus.get_name(self._status)}]>"

    # -- meta files -------------------------------------------------------------
    @property
    def stdout_file(self) -> SpecPath:
        """``job.stdout``: what the command printed."""
        return self._meta_path("job.stdout")

    @property
    def stderr_file(self) -> SpecPath:
        """``job.stderr``: the command's errors, and xqute's own notes on the job."""
        return self._meta_path("job.stderr")

    def _meta_path(self, name: str) -> SpecPath:
        paths = self._paths
        # (a client may point the job at another metadir after it was made)
        if paths.get("") is not self.metadir:
            paths.clear()
            paths[""] = self.metadir
        path = paths.get(name)
        if path is None:
            path = paths[name] = self.metadir / name
        return path

    def forget_paths(self) -> None:
        """Drop the meta file paths built so far (they are built again when
        asked for): a job that ended holds no memory for them."""
        self._paths = {}

    @property
    def status_file(self) -> SpecPath:
        """``job.status``: the job's ``JobStatus`` as an integer."""
        return self._meta_path("job.status")

    @property
    def rc_file(self) -> SpecPath:
        """``job.rc``: the return code, once the job ended."""
        return self._meta_path("job.rc")

    @property
    def jid_file(self) -> SpecPath:
        """``job.jid``: the id the scheduler gave the job."""
        return self._meta_path("job.jid")

    @property
    def usage_file(self) -> SpecPath:
        """``job.usage``: JSON, what the last trial used and how it ended."""
        return self._meta_path("job.usage")

    async def get_usage(self) -> dict[str, Any] | None:
        """The usage record of the last trial that ended (``job.usage``):
        ``wall_s``, ``cpu_s``, ``peak_memory_mb``, ``host``, ``cause``, ``rc``,
        ``requested`` (its resources) and ``sources`` (where each figure came
        from); None before it ended or when the record cannot be read."""
        text = await read_meta(self.usage_file)
        try:
            record = json.loads(text) if text else None
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    @property
    def retry_dir(self) -> SpecPath:
        """``job.retry/``: the files of failed trials, one folder per trial."""
        return self._meta_path("job.retry")

    # -- status, rc and jid -------------------------------------------------------
    @property
    def status(self) -> int:
        """The status the manager knows (no I/O)."""
        return self._status

    async def read_status_file(self) -> int | None:
        """The status the status file holds, or None when it says nothing usable."""
        value = parse_meta_int(await read_meta(self.status_file))
        return value if value in _STATUS_VALUES else None

    async def get_status(self, refresh: bool = False) -> int:
        """The job's status; with ``refresh`` the status file is read first."""
        if refresh:
            value = await self.read_status_file()
            if value is not None:
                self._status = value
        return self._status

    async def set_status(self, status: int, flush: bool = True) -> None:
        """Set the status, and write it to the status file when ``flush``."""
        self._status = status
        if flush:
            try:
                await write_meta(self.status_file, f"{status}\n")
            except OSError as exc:  # a full disk: one digit over one digit
                if exc.errno != errno.ENOSPC or not overwrite_in_place(self.status_file, f"{status}\n"):
                    raise

    async def read_rc_file(self) -> int | None:
        """The return code in the rc file, or None when there is none usable
        (or only the placeholder a trial starts with: -9, unknown)."""
        rc = parse_meta_int(await read_meta(self.rc_file))
        return None if rc == RC_UNKNOWN else rc

    async def reserve_rc(self) -> None:
        """Write the rc file's placeholder (-9, unknown, padded to the width the
        wrapper writes): the wrapper then overwrites it in place, renaming
        nothing and needing no new disk space, and a reader never finds the
        file empty."""
        await write_meta(self.rc_file, RC_PLACEHOLDER)

    async def get_rc(self) -> int:
        """The return code: from the rc file, -9 when unknown."""
        rc = await self.read_rc_file()
        if rc is not None:
            self._rc = rc
        return self._rc if self._rc is not None else -9

    async def set_rc(self, rc: int) -> None:
        """Set the return code and write it to the rc file (over the
        placeholder, in place, when the disk has no room for a new file)."""
        self._rc = rc
        try:
            await write_meta(self.rc_file, f"{rc}\n")
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not overwrite_in_place(self.rc_file, f"{rc:<8}\n"):
                raise

    @property
    def jid(self) -> str | None:
        """The id the scheduler gave this trial (None before submission; no I/O)."""
        return self._jid

    @property
    def submitted_at(self) -> float | None:
        """When this trial was submitted (``time.monotonic()``), or None."""
        return self._submitted_at

    async def get_jid(self) -> str | None:
        """The scheduler's id of the job, read from the jid file when not known
        yet; None when there is none."""
        if self._jid is None:
            text = await read_meta(self.jid_file)
            self._jid = text.strip() or None if text is not None else None
        return self._jid

    async def set_jid(self, jid: Any) -> None:
        """Set the scheduler's id of the job and write it to the jid file."""
        self._jid = str(jid)
        await write_meta(self.jid_file, f"{jid}\n")

    async def append_stderr(self, message: str) -> None:
        """Add a line from xqute itself to the job's stderr file."""
        line = message if message.endswith("\n") else message + "\n"
        path = self.stderr_file
        if isinstance(path, LocalPath):
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line)
        else:
            old = await read_meta(path) or ""
            await path.a_write_text(old + line)

    # -- cleaning between runs and trials ------------------------------------------
    _TRIAL_FILES = (
        "job.stdout", "job.stderr", "job.status", "job.rc", "job.jid", "job.usage", "job.usage.raw",
    )

    async def clean(self, retry: bool = False) -> None:
        """Remove the meta files of the last trial; with ``retry`` move them to
        ``job.retry/<trial_count>/`` instead, so every failed trial is kept."""
        self._rc = None
        self._jid = None
        self._started = False
        metadir = self.metadir
        if isinstance(metadir, LocalPath):
            backup = os.path.join(metadir, "job.retry", str(self.trial_count)) if retry else None
            if backup:
                shutil.rmtree(backup, ignore_errors=True)
                os.makedirs(backup)
            for name in self._TRIAL_FILES:
                src = os.path.join(metadir, name)
                try:
                    if backup:
                        os.replace(src, os.path.join(backup, name))
                    else:
                        os.unlink(src)
                except FileNotFoundError:
                    pass
            return
        # one listing of the metadir, not an existence check per file
        try:
            present = {item.name async for item in metadir.a_iterdir()}
        except FileNotFoundError:
            return
        backup_dir = self.retry_dir / str(self.trial_count)
        for name in self._TRIAL_FILES:
            if name not in present:
                continue
            src = metadir / name
            if retry:
                await src.a_copy(backup_dir / name)
            await src.a_unlink(missing_ok=True)
