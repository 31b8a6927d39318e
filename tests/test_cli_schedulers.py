"""`xqute run` and `xqute kill` through real cluster schedulers (scripts/slurm.sh,
scripts/sge.sh): the run's record tells `xqute kill` which scheduler to use, so
jobs a dead manager left in the cluster are cancelled through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.realparts import ROOT, part_env, require


def env(part: str) -> dict[str, str]:
    environ = {**os.environ, **part_env(part), "PYTHONPATH": str(ROOT)}
    environ.pop("XQUTE_LOG_LEVEL", None)
    return environ


def xqute(part: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xqute", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=env(part),
    )


def cluster_jobs(part: str) -> set[str]:
    """Job ids the cluster still has (pending or running): one per array task
    on Slurm (``123_4``), job numbers on Grid Engine (see ``listed_as``)."""
    if part == "slurm":
        cmd = ["squeue", "-r", "-h", "-o", "%i"]
    else:
        cmd = ["qstat", "-u", "*"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env(part))
    assert proc.returncode == 0, proc.stderr
    if part == "slurm":
        return {line.strip() for line in proc.stdout.splitlines() if line.strip()}
    # qstat: two header lines, then the job id first on each line
    return {line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip()}


def listed_as(part: str, jids) -> set[str]:
    """``jids`` as ``cluster_jobs`` lists them: an array member ``123.4`` of
    Grid Engine under its job number."""
    return {jid.split(".")[0] if part == "sge" else jid for jid in jids}


def wait_for(predicate, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"gave up waiting for {what}")


@pytest.mark.parametrize("part", ["slurm", "sge"])
def test_kill_cancels_cluster_jobs_of_a_dead_manager(part: str, workdir: Path):
    require(part)
    (workdir / "jobs.txt").write_text("sleep 900\n" * 2)
    manager = subprocess.Popen(
        [sys.executable, "-m", "xqute", "run", "jobs.txt", "-s", part, "-f", "2", "-w", "wd",
         "--opt", "poll_interval=0.5"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env(part), start_new_session=True,
    )
    wd = workdir / "wd"
    jids: list[str] = []
    try:
        def submitted():
            found = [(wd / str(i) / "job.jid") for i in range(2)]
            return all(f.exists() and f.read_text().strip() for f in found) and [
                f.read_text().strip() for f in found
            ]

        jids = wait_for(submitted, f"2 jobs submitted to {part}")
        assert listed_as(part, jids) <= cluster_jobs(part)
        record = json.loads((wd / "xqute.run.json").read_text())
        assert record["scheduler"] == part
        assert record["scheduler_opts"] == {"poll_interval": 0.5}

        manager.kill()  # the manager dies; the cluster keeps its jobs
        manager.wait(timeout=60)
        assert listed_as(part, jids) <= cluster_jobs(part)

        killed = xqute(part, "kill", "wd", cwd=workdir)
        assert killed.returncode == 0, killed.stderr
        assert "Killed 2 jobs: 0, 1" in killed.stderr
        wait_for(lambda: not (listed_as(part, jids) & cluster_jobs(part)),
                 f"{part} to drop the jobs", 120)

        state = json.loads(xqute(part, "status", "--json", "wd", cwd=workdir).stdout)
        assert [job["status"] for job in state["jobs"]] == ["FAILED", "FAILED"]
        assert [job["jid"] for job in state["jobs"]] == jids
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait()
        left = listed_as(part, jids) & cluster_jobs(part) if jids else set()
        if left:
            cancel = ["scancel"] if part == "slurm" else ["qdel"]
            subprocess.run(cancel + sorted(left), capture_output=True, timeout=60, env=env(part))


@pytest.mark.parametrize("part", ["slurm", "sge"])
def test_run_through_a_cluster_scheduler(part: str, workdir: Path):
    require(part)
    (workdir / "jobs.txt").write_text("echo one\necho two >&2; exit 4\necho three\n")
    proc = xqute(part, "run", "jobs.txt", "-s", part, "-f", "3", "-w", "wd",
                 "--opt", "poll_interval=0.5", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    assert "2 succeeded, 1 failed" in proc.stderr
    state = json.loads(xqute(part, "status", "--json", "wd", cwd=workdir).stdout)
    assert [(j["status"], j["rc"]) for j in state["jobs"]] == [
        ("FINISHED", 0), ("FAILED", 4), ("FINISHED", 0)
    ]
    assert state["jobs"][1]["stderr_tail"] == ["two"]
    assert (workdir / "wd" / "0" / "job.stdout").read_text() == "one\n"
