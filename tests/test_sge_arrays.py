"""Job arrays through the real Grid Engine of ``scripts/sge.sh``.

A burst of jobs goes to Grid Engine as one ``qsub -t 1-<n> -tc <throttle>``;
each member keeps its own metadir, wrapper, status, rc, hooks and Grid Engine
output files, and is known as ``<job number>.<task id>``. The test cluster has
``max_aj_tasks 100`` (so longer bursts are split), all.q with 32 slots and
small.q with 2 (for members that must wait in the queue). Submissions and
deletions are counted by the scheduler (``submit_calls``, ``kill_calls``) and,
where their arguments matter, by a wrapper that logs each call and execs the
real command. The only stand-in is a qsub that loses its reply (its name says
"fake"): it runs the real qsub, then hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.realparts import ROOT, part_env, require
from tests.test_sge import (
    counting_wrapper,
    marked_sleep,
    nothing_left_running,
    our_jobs,
    wait_for,
    wait_until_out_of_grid_engine,
)
from xqute import Xqute
from xqute.defaults import JobStatus
from xqute.schedulers.sge_scheduler import (
    QstatListing,
    SgeScheduler,
    parse_task_ranges,
    split_jid,
    task_ranges,
)

MEMBER_RE = re.compile(r"([0-9]+)\.([0-9]+)")


@pytest.fixture
def sge(monkeypatch):
    """Skip (or fail in CI) unless Grid Engine is up; use the env it asks for."""
    require("sge")
    for name, value in part_env("sge").items():
        monkeypatch.setenv(name, value)


def members(jids) -> list[tuple[str, int]]:
    """(job number, task id) per member id; fails on an id of another form."""
    found = []
    for jid in jids:
        match = MEMBER_RE.fullmatch(jid or "")
        assert match, f"{jid!r} is not <job number>.<task id>"
        found.append((match.group(1), int(match.group(2))))
    return found


def logged_calls(log: Path) -> list[list[str]]:
    """The argument lists a counting wrapper logged, one per call."""
    return [line.split() for line in log.read_text().splitlines()]


async def run_jobs(workdir, cmds, forks, **opts) -> Xqute:
    xq = Xqute("sge", workdir=workdir, forks=forks, scheduler_opts=opts)
    for cmd in cmds:
        await xq.feed(cmd)
    await asyncio.wait_for(xq.run_until_complete(), 600)
    return xq


# ------------------------------------------------ parsing (no Grid Engine)
def test_task_lists_as_qstat_prints_them():
    assert parse_task_ranges("1-10:1") == [(1, 10, 1)]
    assert parse_task_ranges("3") == [(3, 3, 1)]
    assert parse_task_ranges("3-8:1,10") == [(3, 8, 1), (10, 10, 1)]
    assert parse_task_ranges("1,3") == [(1, 1, 1), (3, 3, 1)]
    assert parse_task_ranges("2-10:4") == [(2, 10, 4)]
    assert parse_task_ranges("undefined") == []
    assert split_jid("123.5") == ("123", 5)
    assert split_jid("123") == ("123", None)
    assert task_ranges([7, 1, 2, 3, 5, 6, 9]) == ["1-3", "5-7", "9"]

    listing = QstatListing()
    listing.add("7", "arr", "r", "2")
    listing.add("7", "arr", "qw", "1,3-9:2")
    listing.add("8", "plain", "qw", None)
    assert listing.find("7.2") == ("arr", "r")
    assert listing.find("7.5") == ("arr", "qw")
    assert listing.find("7.4") is None  # the step leaves it out
    assert listing.find("7.11") is None
    assert listing.find("7") == ("arr", "r")  # the array as a whole
    assert listing.find("8") == ("plain", "qw")
    assert listing.find("8.1") is None  # not an array: no member of it
    assert listing.numbers_named("arr") == ["7"]


# ------------------------------------------------ through the real Grid Engine
async def test_a_burst_is_one_qsub_and_every_member_keeps_its_own_record(sge, workdir, tmp_path):
    log = tmp_path / "qsub.log"
    log.touch()
    qsub = counting_wrapper(tmp_path / "bin", "qsub", log)
    cmds = [["bash", "-c", f"echo member {i} task $SGE_TASK_ID; exit $(( {i} % 3 ))"]
            for i in range(12)]
    xq = await run_jobs(workdir, cmds, forks=4, qsub=qsub, query_interval=1)
    assert xq.scheduler.submit_calls == 1
    calls = logged_calls(log)
    assert len(calls) == 1 and calls[0][:5] == ["-terse", "-t", "1-12", "-tc", "4"], calls
    jids = members([await job.get_jid() for job in xq.jobs])
    assert {number for number, _ in jids} == {jids[0][0]}
    assert [task for _, task in jids] == list(range(1, 13))
    name = xq.scheduler.array_name(xq.jobs)
    for i, job in enumerate(xq.jobs):
        assert await job.get_rc() == i % 3
        assert await job.get_status(refresh=True) == (
            JobStatus.FINISHED if i % 3 == 0 else JobStatus.FAILED
        )
        assert Path(job.stdout_file).read_text() == f"member {i} task {i + 1}\n"
        assert (job.metadir / "job.wrapped.sge").is_file()
        # Grid Engine's own output of the task went into the member's metadir
        for kind in ("stdout", "stderr"):
            link = workdir / ".arrays" / name / f"{i + 1}.{kind}"
            assert os.readlink(link) == str(job.metadir / f"job.sge.{kind}")
            assert (job.metadir / f"job.sge.{kind}").is_file()
    script = (workdir / ".arrays" / f"{name}.sh").read_text()
    assert f"#$ -N {name}\n" in script
    assert f'#$ -o "{workdir}/.arrays/{name}/$TASK_ID.stdout"' in script


async def test_grid_engine_output_of_a_task_lands_in_its_members_file(sge, workdir):
    """What a task prints outside its member's wrapper goes to Grid Engine's
    -e file of that task, which is the member's job.sge.stderr: here the
    array script cannot exec member 1's wrapper (removed while the array was
    held), and bash says so. Member 1 fails with qacct's word; member 0 runs."""
    xq = Xqute("sge", workdir=workdir, forks=2,
               scheduler_opts={"h": True, "qacct_wait": 5, "query_interval": 1})
    for _ in range(2):
        await xq.feed(["echo", "ran"])
    run = asyncio.ensure_future(xq.run_until_complete())

    async def held():
        jids = [job.jid for job in xq.jobs]
        return None not in jids and all(our_jobs().get(jid) == "hqw" for jid in jids)

    await wait_for(held, "the held array to be listed")
    wrapper = xq.jobs[1].metadir / "job.wrapped.sge"
    wrapper.unlink()
    subprocess.run(["qrls", split_jid(xq.jobs[0].jid)[0]], check=True, capture_output=True)
    await asyncio.wait_for(run, 120)
    assert await xq.jobs[0].get_rc() == 0
    assert Path(xq.jobs[0].stdout_file).read_text() == "ran\n"
    assert (xq.jobs[0].metadir / "job.sge.stderr").read_text() == ""
    sge_stderr = (xq.jobs[1].metadir / "job.sge.stderr").read_text()
    assert f"{wrapper}: No such file or directory" in sge_stderr, sge_stderr
    assert await xq.jobs[1].get_rc() == -3
    assert "exit_status 127" in Path(xq.jobs[1].stderr_file).read_text()


async def test_directives_apply_to_every_member(sge, workdir, tmp_path):
    cwd = tmp_path / "run here"
    cwd.mkdir()
    cmd = ["bash", "-c",
           'pwd; echo "FLAVOUR=$FLAVOUR"; qstat -j "$JOB_ID" | grep -E "^(hard resource_list|job_name):"']
    xq = await run_jobs(
        workdir, [cmd] * 5, forks=5, cwd=str(cwd), l="h_rt=600",
        v='FLAVOUR="sweet and sour"',
    )
    name = xq.scheduler.array_name(xq.jobs)
    for job in xq.jobs:
        assert await job.get_rc() == 0, Path(job.stderr_file).read_text()
        lines = Path(job.stdout_file).read_text().splitlines()
        assert lines[0] == str(cwd)
        assert lines[1] == "FLAVOUR=sweet and sour"
        fields = dict(re.split(r":\s+", line, maxsplit=1) for line in lines[2:])
        assert fields == {"hard resource_list": "h_rt=600", "job_name": name}


async def test_a_member_deleted_from_outside_fails_alone(sge, workdir):
    sleep_cmd, marker = marked_sleep(120)
    cmds = [["bash", "-c", "sleep 3; echo done"], sleep_cmd, ["bash", "-c", "sleep 3; echo done"]]
    xq = Xqute("sge", workdir=workdir, forks=3, scheduler_opts={"query_interval": 1})
    for cmd in cmds:
        await xq.feed(cmd)
    run = asyncio.ensure_future(xq.run_until_complete())
    victim = xq.jobs[1]

    async def running():
        return await victim.read_status_file() == JobStatus.RUNNING

    await wait_for(running, "member 1 to start")
    jid = await victim.get_jid()
    number, task = members([jid])[0]
    subprocess.run(["qdel", number, "-t", str(task)], check=True, capture_output=True)
    await asyncio.wait_for(run, 120)
    assert await victim.get_rc() == -3
    assert await victim.get_status(refresh=True) == JobStatus.FAILED
    stderr = Path(victim.stderr_file).read_text()
    assert f"Grid Engine job {jid} ended" in stderr
    assert "failed 100" in stderr and "qdel" in stderr
    for job in (xq.jobs[0], xq.jobs[2]):
        assert await job.get_rc() == 0
        assert Path(job.stdout_file).read_text() == "done\n"
    assert jid not in our_jobs()
    await nothing_left_running(marker)


async def test_a_member_deleted_while_pending_fails_alone(sge, workdir):
    # small.q has 2 slots: of 4 members, tasks 3 and 4 wait
    cmds = [["bash", "-c", f"sleep 6; echo {i}"] for i in range(4)]
    xq = Xqute("sge", workdir=workdir, forks=4,
               scheduler_opts={"q": "small.q", "qacct_wait": 2, "query_interval": 1})
    for cmd in cmds:
        await xq.feed(cmd)
    run = asyncio.ensure_future(xq.run_until_complete())
    victim = xq.jobs[3]

    async def pending():
        jid = victim.jid
        return jid is not None and our_jobs().get(jid) == "qw"

    await wait_for(pending, "member 3 to wait in the queue")
    number, task = members([victim.jid])[0]
    subprocess.run(["qdel", number, "-t", str(task)], check=True, capture_output=True)
    await asyncio.wait_for(run, 180)
    assert await victim.get_rc() == -3
    assert victim.status == JobStatus.FAILED
    assert not await victim.read_status_file() == JobStatus.RUNNING
    assert "has no record of it" in Path(victim.stderr_file).read_text()
    assert [await job.get_rc() for job in xq.jobs[:3]] == [0, 0, 0]
    assert [Path(job.stdout_file).read_text() for job in xq.jobs[:3]] == ["0\n", "1\n", "2\n"]


async def test_failed_members_are_retried_and_their_first_trial_kept(sge, workdir, tmp_path):
    flags = tmp_path / "flags"
    flags.mkdir()
    cmds = []
    for i in range(6):
        flag = shlex.quote(str(flags / str(i)))
        if i in (1, 4):  # fail the first time only
            cmds.append(["bash", "-c", f"if [ -e {flag} ]; then echo ok {i}; "
                                       f"else touch {flag}; echo first >&2; exit 9; fi"])
        else:
            cmds.append(["bash", "-c", f"echo ok {i}"])
    xq = Xqute("sge", workdir=workdir, forks=6, error_strategy="retry", num_retries=2,
               scheduler_opts={"query_interval": 1})
    first_jids = {}

    async def record_first_jids():
        for job in xq.jobs:
            if job.trial_count == 0 and job.jid:
                first_jids.setdefault(job.index, job.jid)
        return False

    for cmd in cmds:
        await xq.feed(cmd)
    run = asyncio.ensure_future(xq.run_until_complete())
    while not run.done():
        await record_first_jids()
        await asyncio.sleep(0.05)
    await run
    assert [await job.get_rc() for job in xq.jobs] == [0] * 6
    assert [job.trial_count for job in xq.jobs] == [0, 1, 0, 0, 1, 0]
    # one array for the burst, then the retried members again (together or alone)
    assert 2 <= xq.scheduler.submit_calls <= 3
    first_array = {number for number, _ in members(first_jids.values())}
    assert len(first_array) == 1
    for i in (1, 4):
        job = xq.jobs[i]
        kept = job.metadir / "job.retry" / "0"
        assert (kept / "job.rc").read_text().strip() == "9"
        assert (kept / "job.stderr").read_text() == "first\n"
        assert (kept / "job.jid").read_text().strip() == first_jids[i]
        # the new trial is a job of its own or a member of a new array
        assert split_jid(job.jid)[0] not in first_array
        assert Path(job.stdout_file).read_text() == f"ok {i}\n"


async def test_halt_deletes_each_array_in_one_qdel_call(sge, workdir, tmp_path):
    """110 jobs: two arrays (max_aj_tasks is 100). Job 0 fails: both arrays
    are deleted, in one qdel call naming the two job numbers."""
    log = tmp_path / "qdel.log"
    log.touch()
    qdel = counting_wrapper(tmp_path / "bin", "qdel", log)
    sleep_cmd, marker = marked_sleep(300)
    xq = Xqute("sge", workdir=workdir, forks=110, error_strategy="halt",
               scheduler_opts={"qdel": qdel, "query_interval": 1})
    await xq.feed(["bash", "-c", "sleep 3; exit 1"])
    for _ in range(109):
        await xq.feed(sleep_cmd)
    await asyncio.wait_for(xq.run_until_complete(), 300)
    assert xq.scheduler.submit_calls == 2
    jids = [job.jid for job in xq.jobs]
    numbers = sorted({number for number, _ in members(jids)}, key=int)
    assert len(numbers) == 2
    assert xq.scheduler.kill_calls == 1
    assert logged_calls(log) == [numbers]  # whole arrays, no task lists
    assert await xq.jobs[0].get_rc() == 1
    for job in xq.jobs[1:]:
        assert await job.get_status(refresh=True) == JobStatus.FAILED
    assert not set(jids) & set(our_jobs())
    await nothing_left_running(marker)


SIGTERM_MANAGER = textwrap.dedent(
    """
    import asyncio, sys
    from xqute import Xqute

    async def main(workdir, njobs, marker):
        # small.q has 2 slots: 2 members run, the others wait in the queue
        xq = Xqute("sge", workdir=workdir, forks=njobs, scheduler_opts={"q": "small.q"})
        for _ in range(njobs):
            await xq.feed(["bash", "-c", f"sleep 300; : {marker}"])
        await xq.run_until_complete()
        print("run ended; qdel calls:", xq.scheduler.kill_calls, flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)


async def test_sigterm_to_the_manager_deletes_the_array(sge, workdir, tmp_path):
    njobs = 6
    marker = f"xqute-sge-test-{os.urandom(6).hex()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XQUTE_LOG_LEVEL": "INFO"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIGTERM_MANAGER, str(workdir), str(njobs), marker,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    jid_files = [workdir / str(i) / "job.jid" for i in range(njobs)]
    try:
        async def all_listed_one_running():
            if not all(f.exists() and f.read_text().strip() for f in jid_files):
                return False
            listed = our_jobs()
            states = [listed.get(f.read_text().strip()) for f in jid_files]
            return None not in states and "r" in states and "qw" in states

        await wait_for(all_listed_one_running, "the members to be listed, one running")
        jids = [f.read_text().strip() for f in jid_files]
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"run ended; qdel calls: 1" in out, (out, err)
    assert b"SIGTERM" in err
    assert len({number for number, _ in members(jids)}) == 1
    assert not set(jids) & set(our_jobs())
    for i in range(njobs):
        assert (workdir / str(i) / "job.status").read_text().strip() == str(JobStatus.FAILED)
    await nothing_left_running(marker)


RERUN_MANAGER = textwrap.dedent(
    """
    import asyncio, json, sys
    from xqute import Xqute

    async def main(workdir, log, opts):
        xq = Xqute("sge", workdir=workdir, forks=6, scheduler_opts=opts)
        script = (
            f'echo "$XQUTE_JOB_INDEX start" >> "{log}"; sleep 10; '
            f'echo "$XQUTE_JOB_INDEX end" >> "{log}"'
        )
        for _ in range(6):
            # xqute expands $NAME in a list command's arguments: bash's own are \\\\$
            await xq.feed(["bash", "-c", script.replace("$", "\\\\$")])
        await xq.run_until_complete()
        print("rcs", [await j.get_rc() for j in xq.jobs], flush=True)
        print("qsub calls", xq.scheduler.submit_calls, flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
    """
)


async def test_a_rerun_after_sigkill_follows_the_members_and_runs_none_twice(sge, workdir, tmp_path):
    """A manager of 6 jobs (one array on small.q: 2 run, 4 wait) is SIGKILLed
    once two members run. Two waiting members lose their jid files (as if the
    manager died between the qsub and writing them). A rerun with the same
    commands submits nothing: it follows all six members, found by their jid
    files or through their array's script, and each runs exactly once."""
    log = tmp_path / "log"
    log.touch()
    qsub_log = tmp_path / "qsub.log"
    qsub_log.touch()
    qsub = counting_wrapper(tmp_path / "bin", "qsub", qsub_log)
    opts = {"qsub": qsub, "q": "small.q", "query_interval": 1, "query_interval_max": 2}
    args = [sys.executable, "-c", RERUN_MANAGER, str(workdir), str(log), json.dumps(opts)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    jid_files = [workdir / str(i) / "job.jid" for i in range(6)]
    first = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    second = None
    jids: list[str] = []
    try:
        async def two_running():
            assert first.returncode is None, await first.communicate()
            starts = [line for line in log.read_text().splitlines() if " start" in line]
            return len(starts) >= 2 and all(f.exists() for f in jid_files)

        await wait_for(two_running, "two members to start")
        first.kill()
        await first.wait()
        jids = [f.read_text().strip() for f in jid_files]
        listed = our_jobs()
        states = [listed.get(jid) for jid in jids]
        assert sum(state in ("r", "t") for state in states) == 2, (jids, listed)
        assert states.count("qw") == 4, (jids, listed)
        waiting = [i for i, state in enumerate(states) if state == "qw"][-2:]
        for i in waiting:
            jid_files[i].unlink()

        second = await asyncio.create_subprocess_exec(
            *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(second.communicate(), 300)
        assert second.returncode == 0, err.decode()
    finally:
        for manager in (first, second):
            if manager is not None and manager.returncode is None:
                manager.kill()
                await manager.wait()
        stuck = await wait_until_out_of_grid_engine(jids)
    assert not stuck, f"jobs still listed by Grid Engine (deleted): {stuck}"
    assert b"rcs [0, 0, 0, 0, 0, 0]" in out, (out, err)
    assert b"qsub calls 0" in out, (out, err)
    assert len(logged_calls(qsub_log)) == 1
    assert [f.read_text().strip() for f in jid_files] == jids  # the same members
    starts = [line.split()[0] for line in log.read_text().splitlines() if " start" in line]
    assert sorted(starts) == [str(i) for i in range(6)], log.read_text()


async def test_more_jobs_than_max_aj_tasks_are_split_into_arrays(sge, workdir, tmp_path):
    log = tmp_path / "qsub.log"
    log.touch()
    qsub = counting_wrapper(tmp_path / "bin", "qsub", log)
    xq = await run_jobs(workdir, [["echo", str(i)] for i in range(130)], forks=130, qsub=qsub)
    assert await xq.scheduler.max_array_size() == 100  # max_aj_tasks of the test cluster
    assert xq.scheduler.submit_calls == 2
    ranges = sorted(call[call.index("-t") + 1] for call in logged_calls(log))
    assert ranges == ["1-100", "1-30"]
    assert [await job.get_rc() for job in xq.jobs] == [0] * 130
    assert [Path(job.stdout_file).read_text() for job in xq.jobs] == [f"{i}\n" for i in range(130)]
    jids = members([job.jid for job in xq.jobs])
    assert len({number for number, _ in jids}) == 2
    assert [task for _, task in jids] == list(range(1, 101)) + list(range(1, 31))


async def test_array_false_submits_one_job_per_qsub(sge, workdir, tmp_path):
    log = tmp_path / "qsub.log"
    log.touch()
    qsub = counting_wrapper(tmp_path / "bin", "qsub", log)
    xq = await run_jobs(workdir, [["echo", str(i)] for i in range(5)], forks=5,
                        qsub=qsub, array=False)
    assert not xq.scheduler.arrays_enabled
    assert xq.scheduler.submit_calls == 5
    calls = logged_calls(log)
    assert len(calls) == 5 and not any("-t" in call for call in calls)
    jids = [await job.get_jid() for job in xq.jobs]
    assert all(jid.isdigit() for jid in jids), jids
    assert [await job.get_rc() for job in xq.jobs] == [0] * 5
    assert not (workdir / ".arrays").exists()


async def test_a_lost_qsub_reply_finds_the_array_by_its_name(sge, workdir, tmp_path):
    """qsub got the array to Grid Engine but its reply never came (it hung past
    command_timeout): the array is found by its name, not submitted again."""
    log = tmp_path / "real-qsub.log"
    fake = tmp_path / "fake-hanging-qsub"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        qsub "$@" >> {shlex.quote(str(log))}
        exec sleep 60
        """))
    fake.chmod(0o755)
    xq = await run_jobs(workdir, [["echo", str(i)] for i in range(4)], forks=4,
                        qsub=str(fake), command_timeout=3)
    submitted = log.read_text().split()
    assert len(submitted) == 1  # qsub reached Grid Engine once
    number = submitted[0].split(".")[0]
    assert [job.jid for job in xq.jobs] == [f"{number}.{task}" for task in range(1, 5)]
    assert [await job.get_rc() for job in xq.jobs] == [0] * 4
    assert [Path(job.stdout_file).read_text() for job in xq.jobs] == [f"{i}\n" for i in range(4)]


async def test_find_submitted_array_and_members_of_a_listed_array(sge, workdir):
    """The lookups after a lost reply and in an adoption, on a held array."""
    sched = SgeScheduler(workdir, h=True)
    jobs = [await sched.create_job(i, ["true"]) for i in range(3)]
    try:
        for job in jobs:
            assert await sched._prepare_submission(job)
        jids = await sched.submit_array(jobs, 3)
        other = SgeScheduler(workdir, h=True)  # knows nothing of it
        assert await other.find_submitted_array(jobs, False) == jids
        assert await other.find_submitted(jobs[2], False) == jids[2]
        answers = await other.query_jobs([_with_jid(job, jid) for job, jid in zip(jobs, jids)])
        assert {answer.state for answer in answers.values()} == {"pending"}
        # another set of members (or trials) is another array
        jobs[0].trial_count = 1
        assert await other.find_submitted_array(jobs, False) is None
        jobs[0].trial_count = 0
    finally:
        subprocess.run(["qdel", split_jid(jids[0])[0]], capture_output=True)
    await wait_until_out_of_grid_engine(jids, limit=60)


def _with_jid(job, jid):
    job._jid = jid
    return job


def test_xqute_kill_deletes_the_members_a_dead_manager_left(sge, workdir):
    """`xqute kill` of a workdir whose manager was SIGKILLed: the members it
    left (one array, running and waiting) are deleted by their ids."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XQUTE_LOG_LEVEL", None)
    (workdir / "jobs.txt").write_text("sleep 900\n" * 4)
    manager = subprocess.Popen(
        [sys.executable, "-m", "xqute", "run", "jobs.txt", "-s", "sge", "-f", "4", "-w", "wd",
         "--opt", "poll_interval=0.5", "--opt", "q=small.q"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )
    jid_files = [workdir / "wd" / str(i) / "job.jid" for i in range(4)]
    jids: list[str] = []
    try:
        loop_deadline = time.monotonic() + 120
        while not all(f.exists() and f.read_text().strip() for f in jid_files):
            assert time.monotonic() < loop_deadline, "the members were not submitted"
            time.sleep(0.2)
        jids = [f.read_text().strip() for f in jid_files]
        assert len({number for number, _ in members(jids)}) == 1
        assert set(jids) <= set(our_jobs())
        manager.kill()
        manager.wait(timeout=60)
        killed = subprocess.run(
            [sys.executable, "-m", "xqute", "kill", "wd"],
            cwd=workdir, capture_output=True, text=True, timeout=300, env=env,
        )
        assert killed.returncode == 0, killed.stderr
        assert "Killed 4 jobs: 0, 1, 2, 3" in killed.stderr
        assert not set(jids) & set(our_jobs())
        for f in jid_files:
            assert (f.parent / "job.status").read_text().strip() == str(JobStatus.FAILED)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait()
        left = set(jids) & set(our_jobs()) if jids else set()
        if left:
            subprocess.run(["qdel", *sorted(left)], capture_output=True, timeout=60)


async def test_members_in_an_error_state_are_reported_and_deleted(sge, workdir, tmp_path):
    # Grid Engine cannot open this output file: every task goes to Eqw
    bad = tmp_path / "no such dir" / "out"
    xq = await run_jobs(workdir, [["true"]] * 3, forks=3, o=str(bad), query_interval=1)
    jids = [job.jid for job in xq.jobs]
    assert len({number for number, _ in members(jids)}) == 1
    for job in xq.jobs:
        assert await job.get_rc() == -3
        stderr = Path(job.stderr_file).read_text()
        assert f"Grid Engine put job {job.jid} in an error state" in stderr
        assert "can't open output file" in stderr
    assert not set(jids) & set(our_jobs())
