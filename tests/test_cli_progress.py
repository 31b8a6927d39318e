"""The progress display: drawn on a terminal (checked under a pseudo-terminal),
silent and free when the output is not one; and the plugin as a library user
would use it."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

from xqute import Xqute
from xqute.progress import ProgressPlugin

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    for name in ("XQUTE_LOG_LEVEL", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"):
        env.pop(name, None)
    return env


def run_in_pty(args: list[str], cwd: Path, timeout: float = 180) -> tuple[int, str]:
    """Run ``args`` with stdin/stdout/stderr on a pseudo-terminal; (rc, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=cli_env())
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        rc = proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return rc, b"".join(chunks).decode(errors="replace")


def run_piped(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=cli_env(), timeout=180)


def test_progress_bar_on_a_terminal(workdir: Path):
    (workdir / "jobs.txt").write_text("sleep 0.2\n" * 8 + "echo broken >&2; exit 2\n")
    rc, output = run_in_pty(
        [sys.executable, "-m", "xqute", "run", "jobs.txt", "-f", "3"], workdir
    )
    assert rc == 1
    assert "\x1b[" in output  # drawn with terminal control sequences
    plain = ANSI.sub("", output)
    # the last frame of the bar: every job counted, per status
    assert "9/9" in plain
    assert "queued 0 · running 0 · done 8 · failed 1" in plain
    # a log line printed while the bar was up came out whole, on its own
    # (cleared) line, not in the middle of the bar
    assert re.search(r"(^|[\r\n])\[\d\d:\d\d:\d\d\] WARNING XQUTE: Job 8 failed \(rc 2\)\r?\n", plain)
    # then the summary, after the bar
    assert plain.index("9/9") < plain.index("xqute: 9 jobs in")
    assert "8 succeeded, 1 failed" in plain


def test_nothing_extra_when_piped(workdir: Path):
    (workdir / "jobs.txt").write_text("true\n" * 6 + "exit 3\n")
    # --slowest 0: which jobs are the slowest is the one thing that may differ
    base = [sys.executable, "-m", "xqute", "run", "jobs.txt", "-f", "2", "--slowest", "0"]
    auto = run_piped(base + ["-w", "auto"], workdir)
    off = run_piped(base + ["-w", "off", "--no-progress"], workdir)
    assert auto.returncode == off.returncode == 1
    assert "\x1b" not in auto.stderr and "\r" not in auto.stderr
    assert "queued" not in auto.stderr and "━" not in auto.stderr
    assert auto.stdout == off.stdout == ""

    def shape(text: str) -> list[str]:
        # the same lines once numbers (times, indexes, pids) and the workdir name are blanked
        text = text.replace("/auto", "/W").replace("/off", "/W")
        return sorted(re.sub(r"\d+(\.\d+)?", "#", line).rstrip() for line in text.splitlines())

    assert shape(auto.stderr) == shape(off.stderr)


def test_progress_costs_nothing_when_not_a_terminal(workdir: Path):
    """Not a terminal: rich is not even imported (so no drawing thread), nothing printed."""
    script = f"""
import asyncio, sys
from xqute import Xqute
from xqute.progress import ProgressPlugin

async def main():
    progress = ProgressPlugin()
    xq = Xqute(workdir={str(workdir / 'wd')!r}, forks=2, plugins=[progress])
    for _ in range(4):
        await xq.feed("true")
    await xq.run_until_complete()
    print(progress.display, progress.counts()["done"], "rich" in sys.modules)

asyncio.run(main())
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True,
        env={**cli_env(), "XQUTE_LOG_LEVEL": "WARNING"}, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "4", "False"]
    assert proc.stderr == ""


async def test_plugin_counts_and_summary(workdir: Path):
    sink = io.StringIO()
    progress = ProgressPlugin(display=False, summary=True, file=sink, slowest=2)
    xq = Xqute(workdir=workdir, forks=3, plugins=[progress], error_strategy="retry", num_retries=1)
    await xq.feed(["sleep", "0.3"])
    await xq.feed("true")
    await xq.feed(["bash", "-c", "echo the reason >&2; exit 6"])
    await xq.feed("true")
    await xq.run_until_complete()

    assert progress.counts() == {"queued": 0, "submitted": 0, "running": 0, "done": 3, "failed": 1}
    assert progress.total == 4
    summary = progress.summary
    assert (summary.total, summary.succeeded, summary.failed) == (4, 3, 1)
    assert summary.retried == 1  # the failing job's first trial was retried once
    assert summary.not_run == 0 and summary.killed == 0
    assert len(summary.slowest) == 2
    assert summary.slowest[0][0] == 0 and summary.slowest[0][2] == "sleep 0.3"
    assert summary.slowest[0][1] >= summary.slowest[1][1]
    assert summary.failures == [(2, 6, "echo the reason >&2; exit 6", "the reason")]
    # a retried job is one job: ranked once, by the time from its first submission
    everyone = ProgressPlugin(display=False, slowest=10)
    xq2 = Xqute(workdir=workdir / "again", forks=3, plugins=[everyone],
                error_strategy="retry", num_retries=2)
    for cmd in ("true", "false", "true"):
        await xq2.feed(cmd)
    await xq2.run_until_complete()
    assert sorted(index for index, _, _ in everyone.summary.slowest) == [0, 1, 2]
    assert everyone.summary.retried == 2
    text = sink.getvalue()
    assert "xqute: 4 jobs in" in text and "3 succeeded, 1 failed, 1 retry" in text
    assert "job 2      rc 6    echo the reason >&2; exit 6" in text


async def test_plugin_draws_its_last_frame_into_a_file(workdir: Path):
    """Forced on for a file that is not a terminal, the bar leaves its final state."""
    sink = io.StringIO()
    progress = ProgressPlugin(display=True, summary=False, file=sink)
    xq = Xqute(workdir=workdir, forks=2, plugins=[progress])
    for _ in range(3):
        await xq.feed("true")
    await xq.feed("false")
    await xq.run_until_complete()
    text = sink.getvalue()
    assert "4/4" in text
    assert "queued 0 · running 0 · done 3 · failed 1" in text
    assert "xqute: 4 jobs" not in text  # summary=False


async def test_plugin_counts_a_halted_run(workdir: Path):
    progress = ProgressPlugin(display=False)
    xq = Xqute(workdir=workdir, forks=1, plugins=[progress], error_strategy="halt")
    await xq.feed("false")
    for _ in range(3):
        await xq.feed("true")
    await xq.run_until_complete()
    assert progress.counts()["queued"] == 3
    assert progress.summary.not_run == 3
    assert progress.summary.failed == 1


def test_summary_text_is_plain():
    from xqute.progress import RunSummary

    summary = RunSummary(
        total=3, succeeded=1, failed=2, not_run=0, killed=1, retried=0, wall_time=2.0,
        slowest=[(0, 1.5, "sleep 1.5")],
        failures=[(1, 143, "sleep 100", "terminated"), (2, 1, "x" * 200, "")],
        workdir="/w d",
    )
    text = summary.format()
    assert text.splitlines()[0] == "xqute: 3 jobs in 2.00s (1.5 jobs/s): 1 succeeded, 2 failed (1 killed)"
    assert "  job 0         1.50s  sleep 1.5" in text
    assert "x" * 59 + "…" in text  # long commands are clipped
    assert text.endswith("Details: xqute status '/w d'")
    assert "\x1b" not in text


def test_summary_names_the_jobs_that_used_most_memory_and_the_causes():
    from xqute.progress import RunSummary

    summary = RunSummary(
        total=3, succeeded=2, failed=1, not_run=0, killed=0, retried=0, wall_time=2.0,
        failures=[(2, 137, "big", "")],
        most_memory=[(2, 2560.0, "big"), (0, 200.4, "small")],
        causes={2: "oom"},
    )
    text = summary.format()
    assert "Most memory (peak):\n  job 2          2.5G  big\n  job 0          200M  small" in text
    assert "  job 2      rc 137 (oom) big" in text


async def test_the_summary_ranks_the_usage_records(workdir: Path):
    """The run summary's memory ranking comes from the jobs' usage records."""
    progress = ProgressPlugin(display=False, summary=False, slowest=2)
    xq = Xqute(workdir=workdir, forks=2, plugins=[progress])
    await xq.feed(["true"])
    await xq.feed(["false"])
    await xq.run_until_complete()
    jobs = {job.index: job for job in xq.jobs}
    assert jobs[1].usage["cause"] == "failed" and jobs[0].usage["cause"] == "ok"
    assert progress.summary.causes == {1: "failed"}
    measured = [job for job in jobs.values() if job.usage.get("peak_memory_mb")]
    assert [index for index, _, _ in progress.summary.most_memory] == [
        job.index for job in sorted(measured, key=lambda job: -job.usage["peak_memory_mb"])
    ]

