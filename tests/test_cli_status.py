"""`xqute status`: the table and `--json`, from the meta files alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def xqute(*args: str, cwd: Path, input: str | None = None, timeout: float = 180):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XQUTE_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "xqute", *args],
        cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout, env=env,
    )


def test_status_json_field_by_field(workdir: Path):
    commands = "echo fine\necho first >&2; echo bad >&2; exit 5\nsleep 0.3\n"
    run = xqute("run", "-", "-f", "3", "-w", "wd", cwd=workdir, input=commands)
    assert run.returncode == 1
    proc = xqute("status", "--json", "wd", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)

    assert state["workdir"] == str(workdir / "wd")
    assert state["total"] == 3
    assert state["counts"] == {"FINISHED": 2, "FAILED": 1}
    run_info = state["run"]
    assert run_info["scheduler"] == "local"
    assert run_info["forks"] == 3
    assert run_info["error_strategy"] == "ignore"
    assert run_info["manager_alive"] is False
    assert run_info["ended_at"] and run_info["started_at"]
    assert run_info["signal"] is None

    ok, bad, slow = state["jobs"]
    assert [ok["index"], bad["index"], slow["index"]] == [0, 1, 2]
    assert ok["status"] == "FINISHED" and ok["rc"] == 0 and ok["trials"] == 1
    assert ok["jid"].isdigit()  # the local scheduler's jid is the wrapper's pid
    assert ok["metadir"] == str(workdir / "wd" / "0")
    assert ok["stderr_tail"] == []  # only failed jobs carry their stderr
    assert ok["submitted_at"] <= ok["ended_at"]
    assert ok["elapsed"] == ok["ended_at"] - ok["submitted_at"]

    assert bad["status"] == "FAILED" and bad["rc"] == 5 and bad["trials"] == 1
    assert bad["stderr_tail"] == ["first", "bad"]

    assert slow["status"] == "FINISHED"
    assert slow["elapsed"] >= 0.3  # the job slept that long between its two files

    # -n limits the stderr lines
    one = json.loads(xqute("status", "--json", "-n", "1", "wd", cwd=workdir).stdout)
    assert one["jobs"][1]["stderr_tail"] == ["bad"]


def test_status_table(workdir: Path):
    run = xqute("run", "-", "-f", "2", cwd=workdir, input="true\nexit 7\ntrue\n")
    assert run.returncode == 1
    proc = xqute("status", cwd=workdir)  # default workdir ./.xqute
    assert proc.returncode == 0
    text = proc.stdout
    assert "\x1b" not in text  # piped: no colours
    lines = text.splitlines()
    assert lines[0] == f"Workdir: {workdir / '.xqute'}"
    assert lines[1].startswith("Run: local scheduler, forks 2, started ")
    header = next(line for line in lines if line.startswith("INDEX"))
    assert header.split() == [
        "INDEX", "STATUS", "RC", "TRIALS", "JID", "ELAPSED", "WALL", "CPU", "PEAK", "MEM", "CAUSE",
    ]
    rows = [line.split() for line in lines[lines.index(header) + 1 :] if line.strip()][:3]
    assert [row[:4] for row in rows] == [
        ["0", "FINISHED", "0", "1"],
        ["1", "FAILED", "7", "1"],
        ["2", "FINISHED", "0", "1"],
    ]
    # the usage columns: wall and CPU measured, the cause of each end
    assert [row[-1] for row in rows] == ["ok", "failed", "ok"]
    assert all(row[6].endswith("s") for row in rows)
    assert "3 jobs: FINISHED 2, FAILED 1" in text
    assert f"  job 1 (rc 7): {workdir / '.xqute' / '1' / 'job.stderr'}" in text

    only = xqute("status", "--only", "failed", cwd=workdir).stdout
    assert "FINISHED  " not in only.split("3 jobs:")[0]
    assert "    1  FAILED" in only


def test_status_of_a_run_started_by_the_library(workdir: Path):
    """A library run writes no record: status reads the metadirs alone."""
    script = f"""
import asyncio
from xqute import Xqute

async def main():
    xq = Xqute(workdir={str(workdir / 'lib')!r}, forks=2, error_strategy="retry", num_retries=1)
    await xq.feed("true")
    await xq.feed(["bash", "-c", "echo no luck >&2; exit 9"])
    await xq.run_until_complete()

asyncio.run(main())
"""
    lib = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert lib.returncode == 0, lib.stderr
    assert not (workdir / "lib" / "xqute.run.json").exists()
    state = json.loads(xqute("status", "--json", "lib", cwd=workdir).stdout)
    assert state["run"] is None
    first, second = state["jobs"]
    assert (first["status"], first["rc"], first["trials"]) == ("FINISHED", 0, 1)
    assert (second["status"], second["rc"], second["trials"]) == ("FAILED", 9, 2)
    assert second["stderr_tail"] == ["no luck"]
    table = xqute("status", "lib", cwd=workdir).stdout
    assert "Run:" not in table
    assert "2 jobs: FINISHED 1, FAILED 1" in table


def test_status_of_jobs_not_yet_submitted_and_garbage_files(workdir: Path):
    wd = workdir / "hand-made"
    for index in range(3):
        (wd / str(index)).mkdir(parents=True)
    (wd / "1" / "job.status").write_text("4\n")  # RUNNING
    (wd / "1" / "job.jid").write_text("12345\n")
    (wd / "2" / "job.status").write_text("not a status")
    (wd / "notes").mkdir()  # not a metadir: ignored
    state = json.loads(xqute("status", "--json", str(wd), cwd=workdir).stdout)
    assert [(j["index"], j["status"], j["trials"]) for j in state["jobs"]] == [
        (0, "QUEUED", 0),
        (1, "RUNNING", 1),
        (2, "UNKNOWN", 1),
    ]
    assert state["jobs"][1]["jid"] == "12345"
    assert state["jobs"][0]["elapsed"] is None


def test_status_shows_usage_and_the_jobs_that_used_most(workdir: Path):
    """``xqute status`` carries each job's usage record (--json) and names the
    jobs that used the most memory and time."""
    script = (
        "python3 -c 'b = bytearray(120 * 2**20); b[::4096] = b\"x\" * len(b[::4096])'\n"
        "sleep 0.6\n"
        "true\n"
    )
    run = xqute("run", "-", "-f", "3", cwd=workdir, input=script)
    assert run.returncode == 0, run.stderr
    state = json.loads(xqute("status", "--json", cwd=workdir).stdout)
    big, slow, quick = (job["usage"] for job in state["jobs"])
    for usage in (big, slow, quick):
        assert usage["cause"] == "ok" and usage["rc"] == 0
        assert usage["wall_s"] is not None and usage["cpu_s"] is not None
        assert usage["sources"]["wall_s"] == "wrapper"
    assert slow["wall_s"] >= 0.55
    assert big["peak_memory_mb"] >= 120
    text = xqute("status", cwd=workdir).stdout
    most = next(line for line in text.splitlines() if line.startswith("Most memory: "))
    assert most.startswith("Most memory: job 0 (")
    longest = next(line for line in text.splitlines() if line.startswith("Longest: "))
    assert longest.startswith("Longest: job 1 (")
