"""`xqute run` driven as a user drives it: a subprocess, real jobs, real exit codes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def xqute(*args: str, cwd: Path, input: str | bytes | None = None, timeout: float = 180):
    """Run ``python -m xqute ARGS`` in ``cwd``; stdout/stderr captured as text."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XQUTE_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "xqute", *args],
        cwd=cwd,
        input=input.encode() if isinstance(input, str) else input,
        capture_output=True,
        timeout=timeout,
        env=env,
    )


def out(proc) -> str:
    return proc.stdout.decode()


def err(proc) -> str:
    return proc.stderr.decode()


def status_json(workdir: Path, cwd: Path) -> dict:
    proc = xqute("status", "--json", str(workdir), cwd=cwd)
    assert proc.returncode == 0, err(proc)
    return json.loads(out(proc))


def test_all_jobs_succeed_exit_0(workdir: Path):
    lines = [f"echo line {i} > 'out {i}.txt'" for i in range(5)]
    (workdir / "jobs.txt").write_text(
        "# a comment line is skipped\n\n" + "\n".join(lines) + "\n   \n"
    )
    proc = xqute("run", "jobs.txt", "--forks", "3", cwd=workdir)
    assert proc.returncode == 0, err(proc)
    # the lines ran through bash: the redirections made the files
    for i in range(5):
        assert (workdir / f"out {i}.txt").read_text() == f"line {i}\n"
    assert sorted(p.name for p in (workdir / ".xqute").iterdir() if p.is_dir()) == [
        "0", "1", "2", "3", "4"
    ]
    assert "xqute: 5 jobs in" in err(proc)
    assert "5 succeeded, 0 failed" in err(proc)
    assert out(proc) == ""  # the summary is a diagnostic: stdout stays clean


def test_failures_exit_1_with_summary(workdir: Path):
    (workdir / "jobs.txt").write_text("true\necho boom >&2; exit 3\nno_such_command_here\ntrue\n")
    proc = xqute("run", "jobs.txt", "-w", "wd", cwd=workdir)
    assert proc.returncode == 1
    text = err(proc)
    assert "2 succeeded, 2 failed" in text
    assert "job 1      rc 3    echo boom >&2; exit 3" in text
    assert "stderr: boom" in text
    assert "job 2      rc 127  no_such_command_here" in text
    assert "command not found" in text
    # the path has a space: the hint is quoted so it can be pasted
    assert f"Details: xqute status '{workdir / 'wd'}'" in text
    # failures are logged at WARNING, which the command shows by default
    assert "WARNING XQUTE: Job 1 failed (rc 3)" in text


def test_commands_from_stdin(workdir: Path):
    commands = "".join(f"echo {i} >> collected.txt\n" for i in range(20))
    proc = xqute("run", "-", "-f", "1", cwd=workdir, input=commands)
    assert proc.returncode == 0, err(proc)
    assert (workdir / "collected.txt").read_text().split() == [str(i) for i in range(20)]


def test_retry_until_success(workdir: Path):
    # fails on its first trial, succeeds on the second
    flaky = 'n=$(cat tries 2>/dev/null || echo 0); echo $((n+1)) > tries; [ "$n" -ge 1 ]'
    (workdir / "jobs.txt").write_text(flaky + "\n")
    proc = xqute("run", "jobs.txt", "--error-strategy", "retry", "--num-retries", "2", cwd=workdir)
    assert proc.returncode == 0, err(proc)
    assert (workdir / "tries").read_text() == "2\n"
    assert "1 succeeded, 0 failed, 1 retry" in err(proc)
    job = status_json(workdir / ".xqute", workdir)["jobs"][0]
    assert job["trials"] == 2
    assert job["status"] == "FINISHED"
    assert (workdir / ".xqute" / "0" / "job.retry" / "0" / "job.rc").read_text().strip() == "1"


def test_halt_stops_at_first_failure(workdir: Path):
    (workdir / "jobs.txt").write_text("exit 4\n" + "touch should-not-exist\n" * 3)
    proc = xqute("run", "jobs.txt", "-f", "1", "-e", "halt", cwd=workdir)
    assert proc.returncode == 1
    assert "0 succeeded, 1 failed, 3 not run" in err(proc)
    assert not (workdir / "should-not-exist").exists()
    state = status_json(workdir / ".xqute", workdir)
    assert [job["status"] for job in state["jobs"]] == ["FAILED", "QUEUED", "QUEUED", "QUEUED"]
    assert state["jobs"][0]["rc"] == 4


def test_scheduler_options_reach_the_scheduler(workdir: Path):
    (workdir / "jobs.txt").write_text("sleep 30\n")
    # timeout=1 is read as JSON (a number); api_token looks secret: not recorded
    proc = xqute(
        "run", "jobs.txt", "--opt", "timeout=1", "--opt", "api_token=s3cr3t-value", cwd=workdir
    )
    assert proc.returncode == 1
    state = status_json(workdir / ".xqute", workdir)
    assert state["jobs"][0]["rc"] == 124  # stopped by the timeout option
    record_text = (workdir / ".xqute" / "xqute.run.json").read_text()
    record = json.loads(record_text)
    assert record["scheduler"] == "local"
    assert record["scheduler_opts"] == {"timeout": 1}
    assert record["omitted_opts"] == ["api_token"]
    assert "s3cr3t-value" not in record_text  # nor in the recorded command line
    assert "api_token=***" in record["manager"]["argv"]
    assert record["manager"]["pid"] > 0 and record["ended_at"]
    assert record["counts"] == {"FAILED": 1}


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "missing.txt"], "cannot read missing.txt"),
        (["run", "jobs.txt", "--scheduler", "nosuch"], "Unknown scheduler 'nosuch'"),
        (["run", "jobs.txt", "--forks", "0"], "must be at least 1"),
        (["run", "jobs.txt", "--opt", "novalue"], "--opt wants KEY=VALUE"),
        (["run", "jobs.txt", "--error-strategy", "explode"], "invalid choice: 'explode'"),
        (["status", "no-such-dir"], "No such workdir: no-such-dir"),
        (["kill", "no-such-dir"], "No such workdir: no-such-dir"),
        (["status", "--only", "sleeping"], "unknown status SLEEPING"),
    ],
)
def test_bad_input_gets_a_clear_error(workdir: Path, args, message):
    (workdir / "jobs.txt").write_text("true\n")
    proc = xqute(*args, cwd=workdir)
    assert proc.returncode == 2
    assert message in err(proc)
    assert "Traceback" not in err(proc)


def test_a_line_that_is_not_utf8_is_refused_and_others_run(workdir: Path):
    (workdir / "jobs.txt").write_bytes(b"touch a\necho \xff\xfe\ntouch b\n")
    proc = xqute("run", "jobs.txt", cwd=workdir)
    assert proc.returncode == 1
    assert "line 2 is not valid UTF-8" in err(proc)
    assert (workdir / "a").exists() and (workdir / "b").exists()


def test_empty_input_is_not_an_error(workdir: Path):
    proc = xqute("run", "-", cwd=workdir, input="# nothing to do\n\n")
    assert proc.returncode == 0
    assert err(proc) == "xqute: no commands in the input\n"


def test_a_shorter_run_in_the_same_workdir_replaces_the_longer_one(workdir: Path):
    assert xqute("run", "-", cwd=workdir, input="true\n" * 5).returncode == 0
    assert xqute("run", "-", cwd=workdir, input="exit 2\n").returncode == 1
    state = status_json(workdir / ".xqute", workdir)
    assert state["total"] == 1
    assert state["counts"] == {"FAILED": 1}


def test_logging_levels_and_log_file(workdir: Path):
    log = workdir / "run log.txt"
    proc = xqute("run", "-", "--log-file", str(log), cwd=workdir, input="true\nexit 1\n")
    assert proc.returncode == 1
    text = log.read_text()
    # routine steps at DEBUG go to the file, not to the terminal
    assert "DEBUG   XQUTE: Job 0 submitted as" in text
    assert "DEBUG   XQUTE: Job 0 succeeded" in text
    assert "WARNING XQUTE: Job 1 failed (rc 1)" in text
    assert "DEBUG" not in err(proc)
    assert "WARNING XQUTE: Job 1 failed (rc 1)" in err(proc)

    quiet = xqute("run", "-", "-q", "-w", "q", cwd=workdir, input="true\nexit 1\n")
    assert quiet.returncode == 1
    assert err(quiet) == ""  # no summary, no warnings

    verbose = xqute("run", "-", "-vv", "-w", "v", cwd=workdir, input="true\n")
    assert "DEBUG   XQUTE: Job 0 started" in err(verbose)


def test_log_to_file_keeps_the_console_at_its_level(tmp_path: Path):
    from xqute.utils import log_to_file, logger

    before = logger.level
    console = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    console_levels = [h.level for h in console]
    logger.setLevel(logging.INFO)
    handler = log_to_file(tmp_path / "x.log")
    try:
        assert logger.level == logging.DEBUG  # the file gets everything
        assert console and all(h.level == logging.INFO for h in console)
        logger.debug("a debug line for the file")
        handler.flush()
        assert "a debug line for the file" in (tmp_path / "x.log").read_text()
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(before)
        for h, level in zip(console, console_levels):
            h.setLevel(level)


def test_version_and_console_script(workdir: Path):
    from importlib.metadata import entry_points

    from xqute import __version__

    proc = xqute("--version", cwd=workdir)
    assert proc.returncode == 0
    assert out(proc).strip() == f"xqute {__version__}"
    found = entry_points(group="console_scripts", name="xqute")
    if not found:
        pytest.skip("xqute is not pip-installed here: no console script metadata")
    main = next(iter(found)).load()
    from xqute.__main__ import main as module_main

    assert main is module_main


def test_a_halted_run_does_not_wait_for_more_input(workdir: Path):
    """The producer keeps stdin open; the run halts; xqute must not hang on it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "xqute", "run", "-", "-e", "halt", "-f", "1"],
        cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        proc.stdin.write(b"exit 1\ntrue\n")
        proc.stdin.flush()
        rc = proc.wait(timeout=120)  # stdin is still open
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
    assert rc == 1
    assert "0 succeeded, 1 failed, 1 not run" in proc.stderr.read().decode()


def test_ctrl_c_kills_the_jobs_and_exits_130(workdir: Path):
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "xqute", "run", "-", "-f", "2"],
        cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        proc.stdin.write(b"sleep 600\n" * 3)
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        status_files = [workdir / ".xqute" / str(i) / "job.status" for i in (0, 1)]
        while not all(f.exists() and f.read_text().strip() == "4" for f in status_files):
            assert time.monotonic() < deadline, "the jobs never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
    assert rc == 130
    stderr = proc.stderr.read().decode()
    assert "Got SIGINT: killing the running jobs" in stderr
    assert "0 succeeded, 2 failed (2 killed), 1 not run" in stderr


def test_last_line_without_newline_runs(workdir: Path):
    proc = xqute("run", "-", cwd=workdir, input="touch one\ntouch two")
    assert proc.returncode == 0
    assert (workdir / "one").exists() and (workdir / "two").exists()
