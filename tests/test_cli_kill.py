"""`xqute kill` stops a run started in another process: through its manager when
that still runs, through the recorded scheduler when the manager is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop("XQUTE_LOG_LEVEL", None)
    return environ


def xqute(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xqute", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env(),
    )


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes in session ``sid``: a local job's wrapper and
    everything it started (the wrapper leads its own session)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[3]) == sid:
            found.append(int(entry))
    return found


def wait_for(predicate, what: str, timeout: float = 90.0):
    """Poll until ``predicate()`` is truthy (a wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for {what}")


def running_jids(workdir: Path) -> list[int]:
    jids = []
    if not workdir.is_dir():
        return jids
    for metadir in workdir.iterdir():
        if metadir.name.isdigit():
            try:
                status = (metadir / "job.status").read_text().strip()
                jid = (metadir / "job.jid").read_text().strip()
            except OSError:
                continue
            if status == "4" and jid:
                jids.append(int(jid))
    return sorted(jids)


@pytest.fixture
def cleanup():
    """Kill whatever a failing test left behind (sessions of recorded wrappers, managers)."""
    sessions: list[int] = []
    managers: list[subprocess.Popen] = []
    yield sessions, managers
    for proc in managers:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for sid in sessions:
        for pid in session_members(sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_run(workdir: Path, lines: str, *args: str) -> subprocess.Popen:
    (workdir / "long.txt").write_text(lines)
    return subprocess.Popen(
        [sys.executable, "-m", "xqute", "run", "long.txt", "-w", "wd", *args],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        start_new_session=True,
    )


def test_kill_stops_a_run_going_in_another_process(workdir: Path, cleanup):
    sessions, managers = cleanup
    manager = start_run(workdir, "sleep 600\n" * 5, "-f", "2")
    managers.append(manager)
    wd = workdir / "wd"
    jids = wait_for(lambda: len(running_jids(wd)) == 2 and running_jids(wd), "2 running jobs")
    sessions.extend(jids)
    assert all(session_members(jid) for jid in jids)

    # a second run cannot start in the same workdir meanwhile
    clash = xqute("run", "-", "-w", "wd", cwd=workdir)
    assert clash.returncode == 2
    assert f"a run is still going in {wd} (manager pid {manager.pid})" in clash.stderr

    killed = xqute("kill", "wd", cwd=workdir)
    assert killed.returncode == 0, killed.stderr
    assert f"Stopping the manager of the run (pid {manager.pid})" in killed.stderr
    assert "The run was stopped." in killed.stderr

    _, stderr = manager.communicate(timeout=120)
    assert manager.returncode == 128 + signal.SIGTERM
    assert "Got SIGTERM: killing the running jobs" in stderr
    assert "0 succeeded, 2 failed (2 killed), 3 not run" in stderr
    for jid in jids:
        assert session_members(jid) == []  # the wrappers and their sleeps are gone

    state = json.loads(xqute("status", "--json", "wd", cwd=workdir).stdout)
    assert [job["status"] for job in state["jobs"]] == ["FAILED"] * 2 + ["QUEUED"] * 3
    assert [job["rc"] for job in state["jobs"][:2]] == [143, 143]
    assert state["run"]["signal"] == "SIGTERM"
    assert state["run"]["manager_alive"] is False

    again = xqute("kill", "wd", cwd=workdir)
    assert again.returncode == 0
    assert "Nothing is running in" in again.stderr


def test_kill_jobs_left_running_by_a_dead_manager(workdir: Path, cleanup):
    sessions, managers = cleanup
    manager = start_run(workdir, "sleep 600\n" * 3, "-f", "3")
    managers.append(manager)
    wd = workdir / "wd"
    jids = wait_for(lambda: len(running_jids(wd)) == 3 and running_jids(wd), "3 running jobs")
    sessions.extend(jids)
    manager.kill()  # SIGKILL: no chance to stop its jobs
    manager.wait(timeout=60)
    assert all(session_members(jid) for jid in jids)  # the jobs outlive it

    killed = xqute("kill", str(wd), cwd=ROOT)  # from another folder, by absolute path
    assert killed.returncode == 0, killed.stderr
    assert "Killed 3 jobs: 0, 1, 2" in killed.stderr
    assert "Stopping the manager" not in killed.stderr
    for jid in jids:
        assert session_members(jid) == []
    state = json.loads(xqute("status", "--json", str(wd), cwd=workdir).stdout)
    assert [(job["status"], job["rc"]) for job in state["jobs"]] == [("FAILED", 143)] * 3


def test_kill_a_library_run_that_keeps_a_record(workdir: Path, cleanup):
    """A library run with RunRecord and a relative workdir, stopped from elsewhere."""
    sessions, managers = cleanup
    script = """
import asyncio
from xqute import Xqute
from xqute.cli import RunRecord

async def main():
    xq = Xqute(workdir="rel wd", forks=2, plugins=[RunRecord()])
    for _ in range(3):
        await xq.feed(["sleep", "600"])
    await xq.run_until_complete()
    print("run returned")

asyncio.run(main())
"""
    manager = subprocess.Popen(
        [sys.executable, "-c", script], cwd=workdir, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True,
    )
    managers.append(manager)
    wd = workdir / "rel wd"
    jids = wait_for(lambda: len(running_jids(wd)) == 2 and running_jids(wd), "2 running jobs")
    sessions.extend(jids)
    record = json.loads((wd / "xqute.run.json").read_text())
    # the scheduler makes a relative workdir absolute, so the record names it fully
    assert record["workdir"] == str(wd) and record["manager"]["cwd"] == str(workdir)

    killed = xqute("kill", str(wd), cwd=ROOT)
    assert killed.returncode == 0, killed.stderr
    stdout, _ = manager.communicate(timeout=120)
    assert "run returned" in stdout  # the library's run_until_complete returned
    for jid in jids:
        assert session_members(jid) == []


def test_kill_a_library_run_without_record(workdir: Path, cleanup):
    """No record: the jobs are found from their files and killed through the local
    scheduler (the manager itself, unknown to xqute kill, is left alone)."""
    sessions, managers = cleanup
    script = """
import asyncio, signal
from xqute import Xqute

async def main():
    xq = Xqute(workdir=".xqute", forks=2)
    for _ in range(2):
        await xq.feed(["sleep", "600"])
    await xq.run_until_complete()
    print("run returned")

asyncio.run(main())
"""
    manager = subprocess.Popen(
        [sys.executable, "-c", script], cwd=workdir, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True,
    )
    managers.append(manager)
    wd = workdir / ".xqute"
    jids = wait_for(lambda: len(running_jids(wd)) == 2 and running_jids(wd), "2 running jobs")
    sessions.extend(jids)

    killed = xqute("kill", cwd=workdir)  # default workdir, as the library spelled it
    assert killed.returncode == 0, killed.stderr
    assert "Killed 2 jobs: 0, 1" in killed.stderr
    for jid in jids:
        assert session_members(jid) == []
    # the manager sees its jobs end and finishes the run by itself
    stdout, stderr = manager.communicate(timeout=120)
    assert "run returned" in stdout, stderr
