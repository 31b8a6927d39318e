"""The ``xqute`` command: run a file of shell commands as jobs, show a run's
status, stop a run.

    xqute run [options] FILE|-     one job per line; exit 0 only if all succeed
    xqute status [WORKDIR]         a table of the jobs, from their meta files
    xqute kill [WORKDIR]           stop a run that is still going

``xqute run`` records how it was started (scheduler, options minus secrets, the
manager's pid) in ``<workdir>/xqute.run.json`` through the ``RunRecord`` plugin,
which library users can add to their own runs so ``xqute kill`` works on them.
``xqute status`` needs nothing but the jobs' meta files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import socket
import stat
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any, AsyncIterator, Sequence

from . import __version__, defaults
from .defaults import JobErrorStrategy, JobStatus
from .plugin import plugin
from .progress import ProgressPlugin, format_seconds, tail_lines
from .utils import log_to_file, logger

RUN_RECORD_NAME = "xqute.run.json"
# Scheduler options whose values are not written to the run record.
SECRET_OPTION = re.compile(
    r"(?:^|[_-])(?:pass|password|passwd|passphrase|secret|token|credentials?|apikey|api_key"
    r"|private_key)(?:$|[_-])",
    re.I,
)
# Exit statuses of `xqute run`
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """Bad input to the command line: printed as ``xqute: error: ...``, exit 2."""


# ------------------------------------------------------------------ run record
def _process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), to tell a reused
    pid; None when there is no such process or it has exited (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _redact(arg: str) -> str:
    """``api_token=xyz`` -> ``api_token=***``: the command line may carry secrets."""
    key, sep, _ = arg.partition("=")
    return f"{key}=***" if sep and SECRET_OPTION.search(key) else arg


def _scheduler_ref(scheduler: Any) -> str:
    """The name ``get_scheduler`` takes back: "local" for a built-in, else module:Class."""
    cls = type(scheduler)
    if cls.__module__ == f"xqute.schedulers.{cls.name}_scheduler" or cls.__module__.startswith(
        f"xqute.schedulers.{cls.name}_scheduler."
    ):
        return cls.name
    return f"{cls.__module__}:{cls.__qualname__}"


def read_run_record(workdir: str) -> dict[str, Any] | None:
    """The run record in ``workdir`` (None when there is none or it is unreadable)."""
    try:
        with open(os.path.join(workdir, RUN_RECORD_NAME), encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def manager_alive(record: dict[str, Any] | None) -> bool | None:
    """Whether the record's manager process still runs: None when it cannot be
    told from here (another host, or no record)."""
    if not record or not isinstance(record.get("manager"), dict):
        return None
    manager = record["manager"]
    if manager.get("host") != socket.gethostname():
        return None
    if record.get("ended_at"):
        return False  # the run has ended; its process is at most exiting
    pid = manager.get("pid")
    if not isinstance(pid, int):
        return None
    ticks = _process_start_ticks(pid)
    return ticks is not None and ticks == manager.get("start_ticks")


class RunRecord:
    """A plugin writing ``<workdir>/xqute.run.json``: the scheduler and its options
    (secret-looking ones left out), and the manager process, so that
    ``xqute kill`` can stop the run later from another shell.

    Use it in a library run with ``Xqute(..., plugins=[RunRecord()])``.
    """

    name = "xqute_run_record"

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        # set when the run has ended (made in on_init, inside the run's loop)
        self.ended: asyncio.Event | None = None
        self._record: dict[str, Any] = {}
        self._path: Any = None

    @plugin.impl
    def on_init(self, xqute: Any) -> None:
        self.signal = None
        self.ended = asyncio.Event()
        scheduler = xqute.scheduler
        opts, omitted = {}, []
        for key, value in xqute.scheduler_opts.items():
            if SECRET_OPTION.search(str(key)):
                omitted.append(key)
            else:
                opts[key] = _json_safe(value)
        self._record = {
            "version": 1,
            "scheduler": _scheduler_ref(scheduler),
            "scheduler_opts": opts,
            "omitted_opts": omitted,
            "workdir": str(scheduler.workdir),
            "forks": scheduler.forks,
            "error_strategy": scheduler.error_strategy,
            "num_retries": scheduler.num_retries,
            "jobname_prefix": scheduler.jobname_prefix,
            "manager": {
                "pid": os.getpid(),
                "start_ticks": _process_start_ticks(os.getpid()),
                "host": socket.gethostname(),
                "cwd": os.getcwd(),
                "argv": [_redact(str(arg)) for arg in sys.argv],
            },
            "started_at": _now(),
            "ended_at": None,
        }
        self._path = scheduler.workdir / RUN_RECORD_NAME
        self._write()

    @plugin.impl
    def on_complete(self, xqute: Any) -> None:
        # the signal that cancelled the run, if any (on_shutdown also fires at a
        # normal end and on a halt, so it cannot tell)
        self.signal = xqute._cancel_signal
        if self.ended is not None:
            self.ended.set()
        counts: dict[str, int] = {}
        for job in xqute.jobs:
            name = JobStatus.get_name(job._status)
            counts[name] = counts.get(name, 0) + 1  # type: ignore[index]
        self._record["ended_at"] = _now()
        self._record["jobs"] = len(xqute.jobs)
        self._record["counts"] = counts
        self._record["signal"] = signal.Signals(self.signal).name if self.signal else None
        self._write()

    def _write(self) -> None:
        text = json.dumps(self._record, indent=2) + "\n"
        try:
            from panpath import LocalPath

            if isinstance(self._path, LocalPath):
                tmp = f"{self._path}.tmp.{os.getpid()}"
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, str(self._path))
            else:
                self._path.write_text(text)
        except OSError as exc:
            logger.warning("Could not write the run record %s: %s", self._path, exc)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------ status
_STATUS_COLOURS = {
    "FINISHED": "32",
    "FAILED": "31",
    "RUNNING": "33",
    "SUBMITTED": "36",
    "QUEUED": "2",
}


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _read_small(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(256).decode(errors="replace").strip()
    except OSError:
        return None


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def read_job_state(metadir: str, index: int, stderr_lines: int = 5, now: float | None = None) -> dict[str, Any]:
    """What a job's metadir says about it (only its files are read).

    elapsed: from submission (the wrapper script's mtime) to the end (the rc
    file's mtime) or, for a job still going, to now.
    """
    now = time.time() if now is None else now
    status_text = _read_small(os.path.join(metadir, "job.status"))
    code = _int_or_none(status_text)
    valid = {v for k, v in vars(JobStatus).items() if k.isupper() and isinstance(v, int)}
    if status_text is None:
        status = "QUEUED"  # fed, not (yet) submitted: the manager writes the file on submission
    elif code in valid:
        status = JobStatus.get_name(code)
    else:
        status = "UNKNOWN"
    rc = _int_or_none(_read_small(os.path.join(metadir, "job.rc")))
    jid = _read_small(os.path.join(metadir, "job.jid")) or None
    retries = 0
    try:
        with os.scandir(os.path.join(metadir, "job.retry")) as entries:
            retries = sum(1 for entry in entries if entry.name.isdigit())
    except OSError:
        pass
    submitted_at = None
    try:
        with os.scandir(metadir) as entries:
            for entry in entries:
                if entry.name.startswith("job.wrapped."):
                    submitted_at = entry.stat().st_mtime
                    break
    except OSError:
        pass
    ended_at = None
    if JobStatus.is_final(code):
        ended_at = _mtime(os.path.join(metadir, "job.rc")) or _mtime(os.path.join(metadir, "job.status"))
    elapsed = None
    if submitted_at is not None and status != "QUEUED":
        elapsed = max(0.0, (ended_at if ended_at is not None else now) - submitted_at)
    failed = code == JobStatus.FAILED
    return {
        "index": index,
        "status": status,
        "rc": rc,
        "trials": retries + (1 if status_text is not None else 0),
        "jid": jid,
        "submitted_at": submitted_at,
        "ended_at": ended_at,
        "elapsed": elapsed,
        "metadir": metadir,
        "stderr_tail": tail_lines(os.path.join(metadir, "job.stderr"), stderr_lines) if failed else [],
    }


def collect_status(workdir: str, stderr_lines: int = 5) -> dict[str, Any]:
    """The state of every job in ``workdir`` (``xqute status --json`` prints this)."""
    if "://" in workdir:
        raise CliError(f"xqute status reads local workdirs only, not {workdir}")
    if not os.path.isdir(workdir):
        raise CliError(f"No such workdir: {workdir}")
    metadirs = []
    with os.scandir(workdir) as entries:
        for entry in entries:
            if entry.name.isdigit() and entry.is_dir():
                metadirs.append((int(entry.name), entry.name))
    metadirs.sort()
    workdir = os.path.abspath(workdir)
    now = time.time()
    jobs = [
        read_job_state(os.path.join(workdir, name), index, stderr_lines, now)
        for index, name in metadirs
    ]
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    record = read_run_record(workdir)
    run = None
    if record is not None:
        run = {
            key: record.get(key)
            for key in ("scheduler", "forks", "error_strategy", "started_at", "ended_at", "signal")
        }
        run["manager_pid"] = (record.get("manager") or {}).get("pid")
        run["manager_alive"] = manager_alive(record)
    return {
        "workdir": workdir,
        "total": len(jobs),
        "counts": counts,
        "run": run,
        "jobs": jobs,
    }


def format_status(state: dict[str, Any], colour: bool = False, only: set[str] | None = None) -> str:
    """The status as a plain table, counts and the stderr of failed jobs."""

    def paint(text: str, status: str) -> str:
        code = _STATUS_COLOURS.get(status)
        return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text

    lines = [f"Workdir: {state['workdir']}"]
    run = state.get("run")
    if run:
        if run.get("manager_alive"):
            going = f"running (manager pid {run.get('manager_pid')})"
        elif run.get("ended_at"):
            going = f"ended {run['ended_at']}" + (f" by {run['signal']}" if run.get("signal") else "")
        else:
            going = "manager gone" if run.get("manager_alive") is False else "state unknown"
        lines.append(f"Run: {run.get('scheduler')} scheduler, forks {run.get('forks')}, "
                     f"started {run.get('started_at')}, {going}")
    jobs = [job for job in state["jobs"] if not only or job["status"] in only]
    header = ("INDEX", "STATUS", "RC", "TRIALS", "JID", "ELAPSED")
    rows = [
        (
            str(job["index"]),
            job["status"],
            "-" if job["rc"] is None else str(job["rc"]),
            str(job["trials"]),
            job["jid"] or "-",
            format_seconds(job["elapsed"]),
        )
        for job in jobs
    ]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    right = {0, 2, 3, 5}

    def cells(row: Sequence[str], status: str | None = None) -> str:
        out = []
        for i, cell in enumerate(row):
            text = cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            out.append(paint(text, status) if i == 1 and status else text)
        return "  ".join(out).rstrip()

    lines.append("")
    lines.append(cells(header))
    for row in rows:
        lines.append(cells(row, row[1]))
    lines.append("")
    order = ["FINISHED", "FAILED", "RUNNING", "SUBMITTED", "QUEUED", "KILLING", "INIT", "UNKNOWN"]
    counted = sorted(state["counts"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    lines.append(
        f"{state['total']} job{'s' if state['total'] != 1 else ''}: "
        + (", ".join(f"{paint(name, name)} {n}" for name, n in counted) or "none")
    )
    failed = [job for job in jobs if job["status"] == "FAILED"]
    if failed:
        lines.append("")
        lines.append("Failed jobs (end of stderr):")
        for job in failed:
            lines.append(f"  job {job['index']} (rc {job['rc']}): {os.path.join(job['metadir'], 'job.stderr')}")
            for text in job["stderr_tail"]:
                lines.append(f"    | {text}")
    return "\n".join(lines)


# ------------------------------------------------------------------ run
def parse_opts(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that reads as JSON (3, true, ["a"]) is taken as such."""
    opts: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"--opt wants KEY=VALUE, got {pair!r}")
        try:
            opts[key] = json.loads(value)
        except ValueError:
            opts[key] = value
    return opts


async def _read_lines(
    stream: IO[bytes], stop: asyncio.Event
) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, line) from a file, pipe or terminal, as they come, until the
    end of the input or until ``stop`` is set (the run ended: Ctrl-C, halt)."""
    number = 0
    buffer = b""
    async for chunk in _read_chunks(stream.fileno(), stop):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            number += 1
            yield number, line
    if buffer and not stop.is_set():
        yield number + 1, buffer


async def _read_chunks(fd: int, stop: asyncio.Event) -> AsyncIterator[bytes]:
    if stat.S_ISREG(os.fstat(fd).st_mode):
        # a regular file never makes a read wait
        while not stop.is_set():
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            yield chunk
        return
    # a pipe or a terminal: wait for data without a thread, so a stopped run
    # does not hang on a producer that has not written (or closed) yet
    loop = asyncio.get_running_loop()
    was_blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    try:
        while not stop.is_set():
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                readable = loop.create_future()
                loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
                stopped = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({readable, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    loop.remove_reader(fd)
                    stopped.cancel()
                continue
            if not chunk:
                return
            yield chunk
    finally:
        os.set_blocking(fd, was_blocking)


def _command_of(raw: bytes, number: int) -> str | None:
    """The command on an input line; None for a blank or comment line."""
    try:
        line = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise CliError(f"line {number} is not valid UTF-8: {exc}") from None
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if "\0" in line:
        raise CliError(f"line {number} contains a NUL character")
    return line


def _remove_stale_metadirs(workdir: str, count: int) -> int:
    """Remove metadirs left by an earlier, longer run in the same workdir (index >=
    ``count``), unless their job still looks alive."""
    removed = 0
    import shutil

    try:
        entries = [e for e in os.scandir(workdir) if e.name.isdigit() and e.is_dir()]
    except OSError:
        return 0
    for entry in entries:
        if int(entry.name) < count:
            continue
        code = _int_or_none(_read_small(os.path.join(entry.path, "job.status")))
        if code in (JobStatus.SUBMITTED, JobStatus.RUNNING):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    return removed


async def run_commands(args: argparse.Namespace) -> int:
    from .xqute import Xqute

    opts = parse_opts(args.opt or [])
    workdir = args.workdir
    if "://" not in workdir:
        # absolute, so the jobs' paths mean the same from any folder (xqute kill)
        workdir = os.path.abspath(workdir)
        record = read_run_record(workdir)
        if manager_alive(record):
            raise CliError(
                f"a run is still going in {workdir} (manager pid {record['manager']['pid']}); "
                "use another --workdir, or stop it with: xqute kill " + workdir
            )
    if args.file == "-":
        source = sys.stdin.buffer
    else:
        try:
            source = open(args.file, "rb")
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror}") from None

    record = RunRecord()
    progress = ProgressPlugin(display=args.progress, summary=not args.quiet, slowest=args.slowest)
    try:
        xqute = Xqute(
            args.scheduler,
            plugins=[record, progress],
            workdir=workdir,
            forks=args.forks,
            error_strategy=args.error_strategy,
            num_retries=args.num_retries,
            scheduler_opts=opts,
            jobname_prefix=args.jobname_prefix,
        )
    except (ValueError, TypeError, PermissionError) as exc:
        raise CliError(str(exc)) from None

    bad_input: CliError | None = None
    await xqute.run_until_complete(keep_feeding=True)
    try:
        # once the run has ended (halted, stopped), later lines would never run
        async for number, raw in _read_lines(source, record.ended):
            try:
                command = _command_of(raw, number)
            except CliError as exc:
                bad_input = exc
                logger.error("Input %s", exc)
                continue
            if command is not None:
                # the line is bash's to read: "\$" keeps xqute from expanding
                # its $NAMEs first (and is an exact inverse for any text)
                await xqute.feed(["bash", "-c", command.replace("$", "\\$")])
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        await xqute.stop_feeding()

    if "://" not in workdir:
        removed = _remove_stale_metadirs(workdir, len(xqute.jobs))
        if removed:
            logger.info("Removed %s metadirs left by an earlier run in %s", removed, workdir)
    if record.signal is not None:
        return 128 + int(record.signal)
    summary = progress.summary
    if bad_input is not None or summary is None:
        return EXIT_FAILED
    if summary.total == 0:
        print("xqute: no commands in the input", file=sys.stderr)
    return EXIT_OK if summary.succeeded == summary.total else EXIT_FAILED


# ------------------------------------------------------------------ kill
def _wait_gone(pid: int, start_ticks: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` s for process ``pid`` to end; True if it did."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):
        fd = None
    try:
        while time.monotonic() < deadline:
            if _process_start_ticks(pid) != start_ticks:
                return True
            if fd is not None:
                import select

                select.select([fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
            else:
                time.sleep(0.05)
        return _process_start_ticks(pid) != start_ticks
    finally:
        if fd is not None:
            os.close(fd)


async def kill_run(args: argparse.Namespace) -> int:
    from .schedulers import get_scheduler

    workdir = os.path.abspath(args.workdir)
    if not os.path.isdir(workdir):
        raise CliError(f"No such workdir: {args.workdir}")
    record = read_run_record(workdir) or {}
    stopped_manager = False
    alive = manager_alive(record)
    manager = record.get("manager") or {}
    if alive:
        pid = manager["pid"]
        print(f"Stopping the manager of the run (pid {pid})...", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it ended meanwhile
        except PermissionError:
            raise CliError(f"not allowed to stop the manager (pid {pid}): it runs as another user") from None
        if not _wait_gone(pid, manager.get("start_ticks"), args.wait):
            print(f"The manager (pid {pid}) did not stop in {args.wait:g} s: killing it", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid, manager.get("start_ticks"), 5)
        stopped_manager = True
    elif alive is None and manager.get("host") and manager.get("host") != socket.gethostname():
        print(
            f"The manager runs on {manager['host']}: only its jobs are killed from here; "
            "it may submit more until it is stopped there.",
            file=sys.stderr,
        )

    # jobs the manager left going (it was killed outright, or ran elsewhere)
    going = []
    for entry in sorted(os.scandir(workdir), key=lambda e: e.name):
        if entry.name.isdigit() and entry.is_dir():
            code = _int_or_none(_read_small(os.path.join(entry.path, "job.status")))
            jid = _read_small(os.path.join(entry.path, "job.jid"))
            if code in (JobStatus.SUBMITTED, JobStatus.RUNNING) and jid:
                going.append(int(entry.name))
    killed: list[int] = []
    if going:
        name = args.scheduler or record.get("scheduler") or "local"
        opts = dict(record.get("scheduler_opts") or {})
        opts.update(parse_opts(args.opt or []))
        missing = [key for key in record.get("omitted_opts") or [] if key not in opts]
        if missing:
            print(f"Options not recorded (secrets): {', '.join(missing)}; pass them with --opt "
                  "if the scheduler needs them to kill jobs", file=sys.stderr)
        if ":" in name:
            import importlib

            module_name, _, class_name = name.partition(":")
            try:
                scheduler_class = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as exc:
                raise CliError(f"cannot load the scheduler {name} the run used: {exc}") from None
        else:
            try:
                scheduler_class = get_scheduler(name)
            except ValueError as exc:
                raise CliError(str(exc)) from None
        # the workdir as the run spelled it: jobs are known by their files' paths
        recorded_workdir = record.get("workdir") or args.workdir
        if (
            not os.path.isabs(recorded_workdir)
            and "://" not in recorded_workdir
            and record.get("workdir")
            and manager.get("cwd")
        ):
            # a library run with a relative workdir: its jobs name their files from there
            os.chdir(manager["cwd"])
        try:
            scheduler = scheduler_class(
                recorded_workdir,
                forks=max(1, len(going)),
                jobname_prefix=record.get("jobname_prefix"),
                **opts,
            )
        except (TypeError, ValueError) as exc:
            raise CliError(f"cannot set up the {name} scheduler: {exc}") from None
        await scheduler.post_init()
        try:
            jobs = []
            for index in going:
                job = await scheduler.create_job(index, ["true"])
                await job.get_jid()
                await job.get_status(refresh=True)
                jobs.append(job)
            answers = await scheduler.query_jobs(jobs)
            live = [job for job, answer in answers.items() if answer.alive]
            if live:
                await scheduler.kill_running_jobs(live)
                killed = sorted(job.index for job in live)
            gone = sorted(job.index for job, answer in answers.items() if not answer.alive)
            if gone:
                # not written as failed: a job the scheduler cannot see from here
                # (another host, another workdir spelling) may still be running
                print(f"Not running according to {name}: jobs " + ", ".join(map(str, gone)),
                      file=sys.stderr)
        finally:
            await scheduler.close()

    if killed:
        print(f"Killed {len(killed)} job{'s' if len(killed) != 1 else ''}: "
              + ", ".join(map(str, killed)), file=sys.stderr)
    if stopped_manager:
        print("The run was stopped.", file=sys.stderr)
    elif not killed:
        print(f"Nothing is running in {workdir}.", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------ parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xqute",
        description="Run shell commands as jobs through a scheduler, and watch them.",
    )
    parser.add_argument("--version", action="version", version=f"xqute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,status,kill}")
    sub.required = True

    default_workdir = f"./{defaults.DEFAULT_WORKDIR_NAME}"
    run = sub.add_parser(
        "run",
        help="run each line of a file as a job",
        description="Run each line of FILE (or stdin with -) as a job: a bash command line. "
        "Blank lines and lines starting with # are skipped. Exit status: 0 when every job "
        "succeeded, 1 otherwise, 2 for bad input, 128+N when stopped by signal N.",
    )
    run.add_argument("file", metavar="FILE|-", help="the commands, one per line; - for stdin")
    run.add_argument("-s", "--scheduler", default="local",
                     help="local (default), sge, slurm, ssh, gbatch, container")
    run.add_argument("-f", "--forks", type=_positive_int, default=os.cpu_count() or 1,
                     help="jobs submitted or running at once (default: the number of CPUs, %(default)s)")
    run.add_argument("-w", "--workdir", default=default_workdir,
                     help="where each job gets its folder of meta files (default: %(default)s)")
    run.add_argument("-e", "--error-strategy", choices=JobErrorStrategy.values(),
                     default=defaults.DEFAULT_ERROR_STRATEGY,
                     help="what a failure does: go on (ignore, default), retry the job, or halt the run")
    run.add_argument("-r", "--num-retries", type=_count, default=defaults.DEFAULT_NUM_RETRIES,
                     help="more trials of a failed job with --error-strategy retry (default: %(default)s)")
    run.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE",
                     help="a scheduler option (repeatable); VALUE is read as JSON when it can be")
    run.add_argument("--jobname-prefix", help="prefix of the job names the scheduler sees")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="draw a progress bar (default: when stderr is a terminal)")
    run.add_argument("--slowest", type=_count, default=5,
                     help="how many of the slowest jobs the summary names (default: %(default)s)")
    _add_logging_args(run)

    status = sub.add_parser("status", help="show the jobs of a run",
                            description="Show the jobs of a run from their meta files.")
    status.add_argument("workdir", nargs="?", default=default_workdir, metavar="WORKDIR",
                        help="the run's workdir (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="print JSON for machines")
    status.add_argument("-n", "--lines", type=_count, default=5,
                        help="lines of stderr shown for each failed job (default: %(default)s)")
    status.add_argument("--only", action="append", metavar="STATUS",
                        help="show only jobs with this status (repeatable, or comma-separated)")

    kill = sub.add_parser(
        "kill", help="stop a run that is still going",
        description="Stop a run: its manager (when it runs on this host) and its jobs, "
        "through the scheduler recorded in WORKDIR/" + RUN_RECORD_NAME + ".",
    )
    kill.add_argument("workdir", nargs="?", default=default_workdir, metavar="WORKDIR",
                      help="the run's workdir (default: %(default)s)")
    kill.add_argument("-s", "--scheduler", help="the scheduler, when the workdir has no record")
    kill.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE",
                      help="a scheduler option, added to (or replacing) the recorded ones")
    kill.add_argument("--wait", type=float, default=30.0,
                      help="seconds to wait for the manager to stop before SIGKILL (default: %(default)s)")
    _add_logging_args(kill)
    return parser


def _add_logging_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more: -v for INFO, -vv for DEBUG (default: warnings and errors)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="log errors only, and print no summary")
    parser.add_argument("--log-file", metavar="FILE", help="also write the full (DEBUG) log to FILE")


def _setup_logging(args: argparse.Namespace) -> None:
    if args.quiet:
        level = logging.ERROR
    elif args.verbose >= 2:
        level = logging.DEBUG
    elif args.verbose == 1:
        level = logging.INFO
    elif "XQUTE_LOG_LEVEL" in os.environ:
        level = logger.level
    else:
        # the summary says what INFO would: keep the terminal for what went wrong
        level = logging.WARNING
    logger.setLevel(level)
    if args.log_file:
        try:
            log_to_file(args.log_file)
        except OSError as exc:
            raise CliError(f"cannot write the log file {args.log_file}: {exc.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xqute`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            only = None
            if args.only:
                only = {s.strip().upper() for item in args.only for s in item.split(",") if s.strip()}
                known = {v for v in vars(JobStatus) if v.isupper()} | {"UNKNOWN"}
                if only - known:
                    raise CliError(f"unknown status {', '.join(sorted(only - known))}; "
                                   f"use some of {', '.join(sorted(known))}")
            state = collect_status(args.workdir, args.lines)
            if args.json:
                print(json.dumps(state, indent=2))
            else:
                colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
                print(format_status(state, colour=colour, only=only))
            return EXIT_OK
        _setup_logging(args)
        if args.command == "run":
            return asyncio.run(run_commands(args))
        return asyncio.run(kill_run(args))
    except CliError as exc:
        print(f"xqute: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `xqute status | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return 130
