"""What a workdir's meta files say about its jobs, read without a manager (no
scheduler is asked): ``xqute status`` prints it, ``xqute run`` and ``xqute
kill`` use it to find the jobs an earlier manager left going.

Only local workdirs are read, with plain file calls; the meta files' names are
the ``Job``'s own.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Sequence

from .defaults import JobStatus
from .job import Job
from .job import RC_UNKNOWN, parse_meta_int
from .progress import format_megabytes, format_seconds, tail_lines
from .runrecord import manager_alive, read_run_record
from .scheduler import Scheduler


def _meta_names() -> tuple[str, str, str, str, str, str]:
    job = Job(0, (), os.sep)
    files = (
        job.status_file, job.rc_file, job.jid_file, job.stderr_file, job.retry_dir, job.usage_file,
    )
    return tuple(path.name for path in files)  # type: ignore[return-value]


STATUS_FILE, RC_FILE, JID_FILE, STDERR_FILE, RETRY_DIR, USAGE_FILE = _meta_names()
# the wrapper script the manager writes on submission (Scheduler.wrapped_script_name
# is this prefix and the scheduler's name): its mtime is when the job was submitted
WRAPPED_PREFIX = Scheduler.WRAPPED_SCRIPT_PREFIX
# what a job can be, as `xqute status` names it
STATUS_NAMES = frozenset({name for name in vars(JobStatus) if name.isupper()} | {"UNKNOWN"})
_VALID_CODES = frozenset(
    value for name, value in vars(JobStatus).items() if name.isupper() and isinstance(value, int)
)
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


def _status_code(metadir: str) -> int | None:
    return parse_meta_int(_read_small(os.path.join(metadir, STATUS_FILE)))


def metadirs(workdir: str) -> list[tuple[int, str]]:
    """(index, path) of every job folder in ``workdir``, by index."""
    found = []
    with os.scandir(workdir) as entries:
        for entry in entries:
            if entry.name.isdigit() and entry.is_dir():
                found.append((int(entry.name), entry.path))
    found.sort()
    return found


def _looks_going(metadir: str) -> bool:
    return _status_code(metadir) in (JobStatus.SUBMITTED, JobStatus.RUNNING)


def jobs_going(workdir: str) -> list[int]:
    """Indexes of the jobs that were submitted (they have a jid) and whose files
    do not say they ended: an earlier manager may have left them going."""
    return [
        index
        for index, metadir in metadirs(workdir)
        if _looks_going(metadir) and _read_small(os.path.join(metadir, JID_FILE))
    ]


def remove_stale_metadirs(workdir: str, count: int) -> int:
    """Remove metadirs left by an earlier, longer run in the same workdir (index >=
    ``count``), unless their job still looks alive; returns how many went."""
    try:
        found = metadirs(workdir)
    except OSError:
        return 0
    removed = 0
    for index, metadir in found:
        if index < count or _looks_going(metadir):
            continue
        shutil.rmtree(metadir, ignore_errors=True)
        removed += 1
    return removed


def read_job_state(metadir: str, index: int, stderr_lines: int = 5, now: float | None = None) -> dict[str, Any]:
    """What a job's metadir says about it (only its files are read).

    elapsed: from submission (the wrapper script's mtime) to the end (the rc
    file's mtime) or, for a job still going, to now.
    """
    now = time.time() if now is None else now
    status_path = os.path.join(metadir, STATUS_FILE)
    rc_path = os.path.join(metadir, RC_FILE)
    status_text = _read_small(status_path)
    code = parse_meta_int(status_text)
    if status_text is None:
        status = "QUEUED"  # fed, not (yet) submitted: the manager writes the file on submission
    elif code in _VALID_CODES:
        status = JobStatus.get_name(code)
    else:
        status = "UNKNOWN"
    rc = parse_meta_int(_read_small(rc_path))
    if rc == RC_UNKNOWN:  # the placeholder a trial starts with
        rc = None
    jid = _read_small(os.path.join(metadir, JID_FILE)) or None
    retries = 0
    try:
        with os.scandir(os.path.join(metadir, RETRY_DIR)) as entries:
            retries = sum(1 for entry in entries if entry.name.isdigit())
    except OSError:
        pass
    submitted_at = None
    try:
        with os.scandir(metadir) as entries:
            for entry in entries:
                if entry.name.startswith(WRAPPED_PREFIX):
                    submitted_at = entry.stat().st_mtime
                    break
    except OSError:
        pass
    ended_at = None
    if JobStatus.is_final(code):
        ended_at = _mtime(rc_path) or _mtime(status_path)
    elapsed = None
    if submitted_at is not None and status != "QUEUED":
        elapsed = max(0.0, (ended_at if ended_at is not None else now) - submitted_at)
    failed = code == JobStatus.FAILED
    usage = None
    if ended_at is not None:
        try:
            usage = json.loads(_read_small(os.path.join(metadir, USAGE_FILE)) or "null")
        except ValueError:
            usage = None
        if not isinstance(usage, dict):
            usage = None
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
        # the last trial's usage record (job.usage): wall_s, cpu_s,
        # peak_memory_mb, host, cause, requested, sources
        "usage": usage,
        "stderr_tail": tail_lines(os.path.join(metadir, STDERR_FILE), stderr_lines) if failed else [],
    }


def collect_status(workdir: str, stderr_lines: int = 5) -> dict[str, Any]:
    """The state of every job in ``workdir`` (``xqute status --json`` prints this).

    Raises ValueError for a workdir that is not a local folder.
    """
    if "://" in workdir:
        raise ValueError(f"xqute status reads local workdirs only, not {workdir}")
    if not os.path.isdir(workdir):
        raise ValueError(f"No such workdir: {workdir}")
    workdir = os.path.abspath(workdir)
    now = time.time()
    jobs = [read_job_state(metadir, index, stderr_lines, now) for index, metadir in metadirs(workdir)]
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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
    header = ("INDEX", "STATUS", "RC", "TRIALS", "JID", "ELAPSED", "WALL", "CPU", "PEAK MEM", "CAUSE")
    rows = []
    for job in jobs:
        usage = job.get("usage") or {}
        rows.append((
            str(job["index"]),
            job["status"],
            "-" if job["rc"] is None else str(job["rc"]),
            str(job["trials"]),
            job["jid"] or "-",
            format_seconds(job["elapsed"]),
            format_seconds(_number(usage.get("wall_s"))),
            format_seconds(_number(usage.get("cpu_s"))),
            format_megabytes(_number(usage.get("peak_memory_mb"))),
            str(usage.get("cause") or "-"),
        ))
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    right = {0, 2, 3, 5, 6, 7, 8}

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
    for title, key, shown in (
        ("Most memory", "peak_memory_mb", format_megabytes),
        ("Longest", "wall_s", format_seconds),
    ):
        ranked = sorted(
            (
                (_number((job.get("usage") or {}).get(key)), job["index"])
                for job in state["jobs"]
            ),
            key=lambda item: -(item[0] or 0),
        )
        ranked = [(value, index) for value, index in ranked if value][:3]
        if ranked:
            lines.append(
                f"{title}: " + ", ".join(f"job {index} ({shown(value)})" for value, index in ranked)
            )
    failed = [job for job in jobs if job["status"] == "FAILED"]
    if failed:
        lines.append("")
        lines.append("Failed jobs (end of stderr):")
        for job in failed:
            lines.append(f"  job {job['index']} (rc {job['rc']}): {os.path.join(job['metadir'], STDERR_FILE)}")
            for text in job["stderr_tail"]:
                lines.append(f"    | {text}")
    return "\n".join(lines)
