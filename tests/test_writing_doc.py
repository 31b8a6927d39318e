"""docs/schedulers/writing.md works as printed.

The page's backend (``ToyqScheduler``) is taken from its python block as is and
run against fake-toyq: toyq is a made-up batch system, so no real part can
stand in for it. fake-toyq is three shell scripts (plus its runner) that queue
the wrapper scripts and run them on this machine, answer ``toyq-status`` from
a spool folder and cancel with SIGTERM, as the page describes toyq. Flag files
in the spool make it refuse, lose or hold jobs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, processes_with
from xqute import JobStatus, Xqute

DOC = ROOT / "docs" / "schedulers" / "writing.md"

TOYQ_SUBMIT = r"""#!/usr/bin/env bash
# fake-toyq: toyq-submit SCRIPT -> "toyq: job <id> queued", the job runs here
set -u
spool=${TOYQ_SPOOL:?}
script=${!#}
echo "submit $*" >>"$spool/calls"
if [ -f "$spool/refuse" ]; then
    echo "toyq: $(cat "$spool/refuse")" >&2; exit 1
fi
if [ -f "$spool/busy" ] && rm "$spool/busy" 2>/dev/null; then
    echo "toyq: queue is full, try again later" >&2; exit 1
fi
[ -r "$script" ] || { echo "toyq: cannot read $script" >&2; exit 1; }
id=100
until mkdir "$spool/jobs/$id" 2>/dev/null; do id=$((id + 1)); done
d=$spool/jobs/$id
sed -n 's/^#TOYQ //p' "$script" >"$d/directives"
echo QUEUED >"$d/state"
if [ -f "$spool/lose" ]; then
    rm -rf "$d"   # toyq says it queued the job, then forgets it
else
    # the job runs apart from toyq-submit, holding none of its caller's files
    # (under uvloop the caller's pipes are inherited, and run_command would
    # wait for the job to end)
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            [ "$fd" -gt 2 ] && eval "exec $fd>&-"
        done 2>/dev/null
        exec setsid "$(dirname "$0")/toyq-run" "$d" "$script" </dev/null >/dev/null 2>&1
    ) &
fi
echo "toyq: job $id queued"
"""

TOYQ_RUN = r"""#!/usr/bin/env bash
# fake-toyq's node: runs one queued job and records how it ended
d=$1; script=$2
sleep 0.3
{
    flock 9
    [ "$(cat "$d/state")" = QUEUED ] || exit 0
    if [ -f "$d/../../hold" ]; then echo "HELD bad node" >"$d/state"; exit 0; fi
    bash "$script" >"$d/out" 2>&1 9>&- &
    echo $! >"$d/pid"
    echo RUNNING >"$d/state"
} 9>"$d/lock"
wait "$(cat "$d/pid")"
rc=$?
{
    flock 9
    if [ "$(cat "$d/state")" = RUNNING ]; then
        if [ "$rc" -eq 0 ]; then echo DONE; else echo "FAILED exit=$rc"; fi >"$d/state"
    fi
} 9>"$d/lock"
"""

TOYQ_STATUS = r"""#!/usr/bin/env bash
# fake-toyq: toyq-status ID... -> "<id> <STATE> [details]" per job it knows
spool=${TOYQ_SPOOL:?}
echo "status $*" >>"$spool/calls"
for id in "$@"; do
    [ -f "$spool/jobs/$id/state" ] && echo "$id $(cat "$spool/jobs/$id/state")"
done
exit 0
"""

TOYQ_CANCEL = r"""#!/usr/bin/env bash
# fake-toyq: toyq-cancel ID... -> SIGTERM to the running ones
spool=${TOYQ_SPOOL:?}
echo "cancel $*" >>"$spool/calls"
for id in "$@"; do
    d=$spool/jobs/$id
    [ -d "$d" ] || { echo "toyq: no job $id" >&2; continue; }
    {
        flock 9
        state=$(cat "$d/state")
        case $state in
            QUEUED|HELD*) echo CANCELLED >"$d/state" ;;
            RUNNING) echo CANCELLED >"$d/state"; kill -TERM "$(cat "$d/pid")" ;;
        esac
    } 9>"$d/lock"
done
"""


def doc_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)


def backend_source() -> str:
    blocks = [b for b in doc_blocks() if "class ToyqScheduler(Scheduler)" in b]
    assert len(blocks) == 1, "writing.md must show the backend in one python block"
    return blocks[0]


class Toyq:
    """The fake-toyq folder, its spool and what was asked of it."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "fake-toyq"
        self.spool = root / "toyq-spool"

    def calls(self, command: str) -> list[list[str]]:
        path = self.spool / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return [line.split()[1:] for line in lines if line.split()[0] == command]

    def job(self, jid: str) -> Path:
        return self.spool / "jobs" / jid

    def state(self, jid: str) -> str:
        return (self.job(jid) / "state").read_text().strip()


@pytest.fixture
def toyq(tmp_path, monkeypatch) -> Toyq:
    fake = Toyq(tmp_path)
    fake.bin.mkdir()
    (fake.spool / "jobs").mkdir(parents=True)
    for name, text in [
        ("toyq-submit", TOYQ_SUBMIT),
        ("toyq-run", TOYQ_RUN),
        ("toyq-status", TOYQ_STATUS),
        ("toyq-cancel", TOYQ_CANCEL),
    ]:
        path = fake.bin / name
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("TOYQ_SPOOL", str(fake.spool))
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    return fake


@pytest.fixture
def ToyqScheduler(tmp_path):
    """The class exactly as the page prints it, imported as toyq_scheduler."""
    path = tmp_path / "toyq_scheduler.py"
    path.write_text(backend_source())
    spec = importlib.util.spec_from_file_location("toyq_scheduler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ToyqScheduler


def test_the_backend_fits_in_150_lines():
    assert len(backend_source().splitlines()) <= 150


async def run_jobs(scheduler, workdir, cmds, **opts) -> Xqute:
    xq = Xqute(scheduler, workdir=workdir, forks=4, scheduler_opts=opts)
    for cmd in cmds:
        await xq.feed(cmd)
    await asyncio.wait_for(xq.run_until_complete(), 60)
    return xq


async def test_jobs_finish_and_a_failing_job_fails_with_its_rc(toyq, ToyqScheduler, workdir):
    cmds = [["bash", "-c", f"sleep 1; echo out {i}"] for i in range(5)]
    cmds.append(["bash", "-c", "sleep 1; echo oops >&2; exit 3"])
    xq = await run_jobs(ToyqScheduler, workdir, cmds, mem="1G")

    *good, bad = xq.jobs
    for i, job in enumerate(good):
        assert job.status == JobStatus.FINISHED
        assert await job.get_rc() == 0
        assert Path(job.stdout_file).read_text() == f"out {i}\n"
    assert bad.status == JobStatus.FAILED
    assert await bad.get_rc() == 3
    assert "oops" in Path(bad.stderr_file).read_text()

    # they ran through toyq, under the ids toyq gave, with the directives
    for job in xq.jobs:
        jid = await job.get_jid()
        directives = (toyq.job(jid) / "directives").read_text().split()
        assert directives == [f"--name={xq.scheduler.job_name(job)}", "--mem=1G"]
    assert toyq.state(await bad.get_jid()) == "FAILED exit=3"
    assert len(toyq.calls("submit")) == len(cmds)
    # many jobs per status question: one toyq-status for the jobs in flight
    status_calls = toyq.calls("status")
    assert status_calls and max(len(ids) for ids in status_calls) >= 2


async def test_a_kill_stops_the_running_job(toyq, ToyqScheduler, workdir, tmp_path):
    marker = tmp_path / "not-killed"
    xq = Xqute(ToyqScheduler, workdir=workdir)
    await xq.run_until_complete(keep_feeding=True)
    # bash -c with two commands stays a process of its own, found by its command line
    command = f"sleep 30; touch '{marker}'"
    job = await xq.feed(["bash", "-c", command])
    for _ in range(200):
        if job.status == JobStatus.RUNNING and processes_with(command):
            break
        await asyncio.sleep(0.05)
    assert job.status == JobStatus.RUNNING
    assert processes_with(command)
    jid = await job.get_jid()

    started = time.monotonic()
    xq.cancel()
    await asyncio.wait_for(xq.stop_feeding(), 30)
    assert time.monotonic() - started < 10

    assert job.status == JobStatus.FAILED
    assert toyq.calls("cancel") == [[jid]]
    assert toyq.state(jid) == "CANCELLED"
    for _ in range(100):  # the wrapper passes the SIGTERM on to the command
        if not processes_with(command):
            break
        await asyncio.sleep(0.05)
    assert processes_with(command) == []
    assert not marker.exists()
    assert await job.get_rc() != 0


async def test_a_refusal_fails_the_job_with_rc_minus_2(toyq, ToyqScheduler, workdir):
    (toyq.spool / "refuse").write_text("no such queue")
    xq = await run_jobs(ToyqScheduler, workdir, ["echo hi"])
    job = xq.jobs[0]
    assert job.status == JobStatus.FAILED
    assert await job.get_rc() == -2
    assert "toyq: no such queue" in Path(job.stderr_file).read_text()
    assert len(toyq.calls("submit")) == 1  # not a refusal worth trying again


async def test_a_full_queue_is_tried_again(toyq, ToyqScheduler, workdir):
    (toyq.spool / "busy").touch()
    xq = await run_jobs(ToyqScheduler, workdir, ["echo hi"])
    job = xq.jobs[0]
    assert job.status == JobStatus.FINISHED
    assert Path(job.stdout_file).read_text() == "hi\n"
    assert len(toyq.calls("submit")) == 2


async def test_a_job_toyq_forgets_fails_as_gone(toyq, ToyqScheduler, workdir):
    (toyq.spool / "lose").touch()
    # no pause and no grace, so the test need not wait for them
    xq = await run_jobs(ToyqScheduler, workdir, ["echo hi"], query_interval=0, end_grace=0)
    job = xq.jobs[0]
    assert job.status == JobStatus.FAILED
    assert await job.get_rc() == -3
    assert "toyq no longer lists the job" in Path(job.stderr_file).read_text()


async def test_a_held_job_is_cancelled_and_failed(toyq, ToyqScheduler, workdir):
    (toyq.spool / "hold").touch()
    xq = await run_jobs(ToyqScheduler, workdir, ["echo hi"], query_interval=0)
    job = xq.jobs[0]
    jid = await job.get_jid()
    assert job.status == JobStatus.FAILED
    assert await job.get_rc() == -3
    assert "toyq says HELD bad node" in Path(job.stderr_file).read_text()
    assert [jid] in toyq.calls("cancel")
    assert toyq.state(jid) == "CANCELLED"


def test_the_usage_block_runs(toyq, tmp_path):
    """The page's two blocks as files, run as a user would: python main.py."""
    usage = [b for b in doc_blocks() if "from toyq_scheduler import ToyqScheduler" in b]
    assert len(usage) == 1
    (tmp_path / "toyq_scheduler.py").write_text(backend_source())
    (tmp_path / "main.py").write_text(usage[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    proc = subprocess.run(
        [sys.executable, "main.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    metadirs = sorted((tmp_path / ".xqute").iterdir(), key=lambda p: int(p.name))
    assert [int((d / "job.rc").read_text()) for d in metadirs] == [0] * 8
    assert [(d / "job.stdout").read_text() for d in metadirs] == [f"job {i}\n" for i in range(8)]
    assert len(toyq.calls("submit")) == 8
