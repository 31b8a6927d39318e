"""Job arrays through the real Slurm of ``scripts/slurm.sh``.

A burst of jobs goes out as one ``sbatch --array``; each member keeps its own
metadir, wrapper, status, rc and hooks. The test cluster sets MaxArraySize=100
so that arrays past it are split. ``*_fake_*`` tests put a fake sbatch first for
what the real one cannot be made to do (lose its reply).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.realparts import ROOT
from tests.test_slurm import (  # noqa: F401  (slurm is a fixture)
    calls,
    count_calls,
    fake_command,
    read,
    run,
    slurm,
    slurm_cli,
    squeue_states,
    wait_for,
)
from xqute import JobStatus, Xqute
from xqute.schedulers.slurm_scheduler import SlurmScheduler, expand_job_ids

MEMBER_RE = re.compile(r"([0-9]+)_([0-9]+)")


def array_ids(jids) -> set[str]:
    ids = set()
    for jid in jids:
        match = MEMBER_RE.fullmatch(jid)
        assert match, f"{jid!r} is not <array id>_<task id>"
        ids.add(match.group(1))
    return ids


def test_expand_job_ids():
    assert expand_job_ids("123_[5-7%2]") == ["123_5", "123_6", "123_7"]
    assert expand_job_ids("123_[1,3,5-6]") == ["123_1", "123_3", "123_5", "123_6"]
    assert expand_job_ids("123_4") == ["123_4"]
    assert expand_job_ids("123") == ["123"]
    assert expand_job_ids("12+0") == ["12+0"]


async def test_a_burst_is_one_sbatch_and_every_member_keeps_its_own_record(slurm, workdir, tmp_path):
    opts, log = count_calls(tmp_path)
    cmds = [["bash", "-c", f"echo member {i} task $SLURM_ARRAY_TASK_ID; exit $(( {i} % 3 ))"]
            for i in range(12)]
    xq = await run(workdir, cmds, forks=4, query_interval=1, **opts)
    submits = calls(log, "sbatch")
    assert len(submits) == 1
    assert "--array=0-11%4" in submits[0][1]
    jids = [await job.get_jid() for job in xq.jobs]
    assert len(array_ids(jids)) == 1
    assert [jid.split("_")[1] for jid in jids] == [str(i) for i in range(12)]
    for i, job in enumerate(xq.jobs):
        assert await job.get_rc() == i % 3
        assert job.status == (JobStatus.FINISHED if i % 3 == 0 else JobStatus.FAILED)
        assert read(job.stdout_file) == f"member {i} task {i}\n"
        assert (job.metadir / "job.wrapped.slurm").is_file()


async def test_directives_apply_to_every_member(slurm, workdir):
    xq = await run(
        workdir,
        [["bash", "-c", 'echo "$XQ_DIRECTIVE"'] for _ in range(5)],
        forks=5,
        export="ALL,XQ_DIRECTIVE=seen",
        p="small",
    )
    jids = [await job.get_jid() for job in xq.jobs]
    for job in xq.jobs:
        assert read(job.stdout_file) == "seen\n"

    def partitions() -> dict[str, str]:
        out = slurm_cli("sacct", "-n", "-P", "-X", "-j", ",".join(jids), "-o", "JobID,Partition")
        return dict(line.split("|") for line in out.splitlines())

    # accounting lags the end of a job by a moment
    await wait_for(lambda: set(partitions()) >= set(jids), timeout=30, what="sacct records")
    assert {partitions()[jid] for jid in jids} == {"small"}


async def test_a_member_killed_from_outside_fails_alone(slurm, workdir):
    xq = Xqute("slurm", workdir=workdir, forks=4, scheduler_opts={"query_interval": 1})
    jobs = [await xq.feed(["sleep", "300" if i == 2 else "3"]) for i in range(4)]
    await xq.run_until_complete(keep_feeding=True)
    await wait_for(lambda: jobs[2].status_file.exists()
                   and read(jobs[2].status_file).strip() == str(JobStatus.RUNNING),
                   what="member 2 to run")
    jid = await jobs[2].get_jid()
    assert MEMBER_RE.fullmatch(jid)
    slurm_cli("scancel", jid)
    await xq.stop_feeding()
    assert jobs[2].status == JobStatus.FAILED
    assert await jobs[2].get_rc() not in (0, -9)
    assert "CANCELLED" in read(jobs[2].stderr_file)  # Slurm's line, through the link
    for i in (0, 1, 3):
        assert await jobs[i].get_rc() == 0, i


async def test_a_member_cancelled_while_pending_fails_with_slurms_word(slurm, workdir):
    xq = Xqute(
        "slurm", workdir=workdir, forks=3,
        scheduler_opts={"begin": "now+3600", "query_interval": 1, "end_grace": 1},
    )
    jobs = [await xq.feed(["bash", "-c", f"echo {i}"]) for i in range(3)]
    await xq.run_until_complete(keep_feeding=True)
    await wait_for(lambda: all(job.jid_file.exists() for job in jobs), what="the submission")
    jids = [read(job.jid_file).strip() for job in jobs]
    (array_id,) = array_ids(jids)
    slurm_cli("scancel", jids[1])
    await wait_for(lambda: jobs[1].status == JobStatus.FAILED, what="member 1 to be failed")
    # let the others start now
    slurm_cli("scontrol", "update", f"JobId={array_id}", "StartTime=now")
    await xq.stop_feeding()
    assert await jobs[1].get_rc() == -3
    # Slurm keeps no record of a pending task cancelled alone: xqute says where it went
    assert (f"Slurm job {jids[1]} left array {array_id} before it ran"
            in read(jobs[1].stderr_file))
    assert [await jobs[i].get_rc() for i in (0, 2)] == [0, 0]
    assert read(jobs[2].stdout_file) == "2\n"


async def test_failed_members_are_retried_together_in_a_new_array(slurm, workdir, tmp_path):
    opts, log = count_calls(tmp_path)
    flaky = ['if [ -e "$XQUTE_JOB_METADIR/tried" ]; then echo second; '
             'else touch "$XQUTE_JOB_METADIR/tried"; exit 4; fi']
    cmds = [["bash", "-c", flaky[0]] if i in (1, 3) else ["bash", "-c", "sleep 1; echo once"]
            for i in range(5)]
    xq = await run(workdir, cmds, forks=5, error_strategy="retry", num_retries=2,
                   query_interval=1, **opts)
    for i, job in enumerate(xq.jobs):
        assert await job.get_rc() == 0, i
        if i in (1, 3):
            assert job.trial_count == 1
            assert read(job.stdout_file) == "second\n"
            first = job.metadir / "job.retry" / "0"
            assert read(first / "job.rc").strip() == "4"
            assert read(first / "job.jid").strip() != await job.get_jid()
        else:
            assert job.trial_count == 0
    submits = calls(log, "sbatch")
    # the burst, then the two failed members: alone or together, never the others
    assert 2 <= len(submits) <= 3
    assert "--array=0-4%5" in submits[0][1]


async def test_halt_cancels_the_array_in_one_scancel(slurm, workdir, tmp_path):
    opts, log = count_calls(tmp_path)
    xq = await run(
        workdir,
        [["bash", "-c", "sleep 2; exit 1"], ["sleep", "300"], ["sleep", "300"], ["sleep", "300"]],
        error_strategy="halt",
        query_interval=1,
        **opts,
    )
    jids = [await job.get_jid() for job in xq.jobs]
    (array_id,) = array_ids(jids)
    assert await xq.jobs[0].get_rc() == 1
    assert all(job.status == JobStatus.FAILED for job in xq.jobs)
    cancels = calls(log, "scancel")
    assert [args.split() for _, args in cancels] == [[array_id]]
    await wait_for(lambda: set(squeue_states(jids[1:]).values()) == {"CANCELLED"},
                   timeout=30, what="Slurm to show the members cancelled")


MANAGER = textwrap.dedent(
    """
    import asyncio, sys
    from xqute import Xqute
    async def main():
        xq = Xqute("slurm", workdir=sys.argv[1], forks=int(sys.argv[2]),
                   scheduler_opts={"query_interval": 1})
        for i in range(int(sys.argv[3])):
            await xq.feed(["bash", "-c", sys.argv[4].replace("{i}", str(i))])
        await xq.run_until_complete()
        print("rcs", [await j.get_rc() for j in xq.jobs])
    asyncio.run(main())
    """
)


def start_manager(workdir, forks, n, cmd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", MANAGER, str(workdir), str(forks), str(n), cmd],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_jids(manager, workdir, n) -> list[str]:
    files = [workdir / str(i) / "job.jid" for i in range(n)]
    start = time.monotonic()
    while not all(f.exists() and f.read_text().strip() for f in files):
        assert manager.poll() is None, manager.communicate()
        assert time.monotonic() - start < 60, "jobs were not all submitted"
        time.sleep(0.1)
    return [read(f).strip() for f in files]


def test_sigterm_cancels_the_array(slurm, workdir):
    manager = start_manager(workdir, 6, 6, "sleep 300")
    jids = wait_for_jids(manager, workdir, 6)
    assert len(array_ids(jids)) == 1
    manager.send_signal(signal.SIGTERM)
    out, err = manager.communicate(timeout=60)
    assert manager.returncode == 0, err
    start = time.monotonic()
    while set(squeue_states(jids).values()) != {"CANCELLED"}:
        assert time.monotonic() - start < 30, squeue_states(jids)
        time.sleep(0.5)


def test_a_rerun_after_sigkill_follows_the_members_and_never_runs_one_twice(slurm, workdir, tmp_path):
    """forks 2: the array runs 2 members at once and holds the others back; the
    manager is SIGKILLed; a rerun adopts queued and running members alike, and
    finds through the array's script two members whose jid files are missing
    (as if the manager had been killed between the sbatch and those files)."""
    ledger = tmp_path / "ran"
    cmd = f"echo {{i}} >> '{ledger}'; sleep 3; echo done {{i}}"
    first = start_manager(workdir, 2, 6, cmd)
    jids = wait_for_jids(first, workdir, 6)
    first.kill()
    first.wait()
    assert set(squeue_states(jids).values()) <= {"RUNNING", "PENDING"}
    for i in (4, 5):
        (workdir / str(i) / "job.jid").unlink()
    second = start_manager(workdir, 2, 6, cmd)
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    assert "rcs [0, 0, 0, 0, 0, 0]" in out
    assert [read(workdir / str(i) / "job.jid").strip() for i in range(6)] == jids
    assert sorted(ledger.read_text().split()) == [str(i) for i in range(6)]
    for i in range(6):
        assert read(workdir / str(i) / "job.stdout") == f"done {i}\n"


async def test_more_jobs_than_max_array_size_are_split(slurm, workdir, tmp_path):
    opts, log = count_calls(tmp_path)
    scheduler = SlurmScheduler(workdir / "probe")
    limit = await scheduler.max_array_size()
    if limit > 200:
        pytest.fail(f"the test cluster's MaxArraySize is {limit}; scripts/slurm.sh sets 100")
    n = limit + 30
    xq = await run(workdir, [["true"]] * n, forks=50, query_interval=1, **opts)
    assert [await job.get_rc() for job in xq.jobs] == [0] * n
    submits = calls(log, "sbatch")
    assert len(submits) == 2
    sizes = sorted(int(re.search(r"--array=0-(\d+)%", args).group(1)) + 1 for _, args in submits)
    assert sizes == [30, limit]
    throttles = [int(re.search(r"%(\d+)", args).group(1)) for _, args in submits]
    assert sum(throttles) == 50  # forks, shared out
    assert len(array_ids([await job.get_jid() for job in xq.jobs])) == 2


async def test_array_false_submits_one_job_per_sbatch(slurm, workdir, tmp_path):
    opts, log = count_calls(tmp_path)
    xq = await run(workdir, [["true"]] * 3, forks=3, array=False, **opts)
    assert [await job.get_rc() for job in xq.jobs] == [0, 0, 0]
    assert len(calls(log, "sbatch")) == 3
    jids = [await job.get_jid() for job in xq.jobs]
    assert all(re.fullmatch(r"[0-9]+", jid) for jid in jids), jids


async def test_jobs_fed_in_a_loop_while_running_go_out_as_one_array(slurm, workdir, tmp_path):
    """pipen feeds a process's jobs one by one after run_until_complete(keep_feeding=True)."""
    opts, log = count_calls(tmp_path)
    xq = Xqute("slurm", workdir=workdir, forks=8, scheduler_opts={"query_interval": 1, **opts})
    await xq.run_until_complete(keep_feeding=True)
    for i in range(10):
        await xq.feed(["echo", str(i)])
        await asyncio.sleep(0.01)  # a plugin's hook doing some I/O
    await xq.stop_feeding()
    assert [await job.get_rc() for job in xq.jobs] == [0] * 10
    assert len(calls(log, "sbatch")) == 1


async def test_fake_sbatch_that_loses_its_reply_finds_the_array(slurm, workdir, tmp_path):
    """fake sbatch: submits for real, then says it timed out (a lost reply); the
    array is found by its name and each member runs once."""
    real = slurm_cli("sh", "-c", "command -v sbatch").strip()
    sbatch = fake_command(tmp_path, "sbatch-lost-reply", f"""
        '{real}' "$@" >/dev/null || exit $?
        echo "sbatch: error: Socket timed out on send/recv operation" >&2
        exit 1
    """)
    ledger = tmp_path / "ran"
    xq = await run(
        workdir,
        [["bash", "-c", f"echo {i} >> '{ledger}'"] for i in range(4)],
        forks=4, sbatch=sbatch, query_interval=1,
    )
    assert [await job.get_rc() for job in xq.jobs] == [0, 0, 0, 0]
    assert sorted(ledger.read_text().split()) == ["0", "1", "2", "3"]
    assert len(array_ids([await job.get_jid() for job in xq.jobs])) == 1


async def test_members_fire_their_hooks_in_order_and_a_veto_leaves_one_out(slurm, workdir, tmp_path, recorder):
    from xqute import plugin

    rec, recorder_plugin = recorder
    opts, log = count_calls(tmp_path)

    class VetoTwo:
        name = "veto_two"

        @plugin.impl
        async def on_job_submitting(scheduler, job):
            return False if job.index == 2 else None

    xq = Xqute("slurm", workdir=workdir, forks=5, plugins=[recorder_plugin, VetoTwo],
               scheduler_opts={"query_interval": 1, **opts})
    for i in range(5):
        await xq.feed(["bash", "-c", f"exit {int(i == 3)}"])
    await xq.run_until_complete()
    submits = calls(log, "sbatch")
    assert len(submits) == 1 and "--array=0-3%5" in submits[0][1]  # 4 members, not 5
    assert xq.jobs[2].status == JobStatus.QUEUED
    assert rec.of(2) == ["on_job_init", "on_job_queued", "on_job_submitting"]
    for i in (0, 1, 3, 4):
        end = "on_job_failed" if i == 3 else "on_job_succeeded"
        assert rec.of(i) == ["on_job_init", "on_job_queued", "on_job_submitting",
                             "on_job_submitted", "on_job_started", end], i
    # every member was asked before the array went out, told after it was accepted
    order = [hook for hook, _ in rec.events if hook in ("on_job_submitting", "on_job_submitted")]
    assert order == ["on_job_submitting"] * 5 + ["on_job_submitted"] * 4
