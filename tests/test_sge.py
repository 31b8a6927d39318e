"""SgeScheduler against the real Grid Engine brought up by ``scripts/sge.sh``.

Every test here submits real jobs through the real qsub/qstat/qdel/qacct; the
only stand-in is a flaky qsub (its name says "fake") that refuses the first
submission the way an unreachable qmaster does, then hands over to the real one.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import processes_with
from tests.realparts import ROOT, part_env, require
from xqute import Xqute
from xqute.defaults import JobStatus
from xqute.schedulers.sge_scheduler import SgeScheduler, parse_task_ranges

@pytest.fixture(autouse=True)
def sge(monkeypatch):
    """Skip (or fail in CI) unless Grid Engine is up; use the env it asks for."""
    require("sge")
    for name, value in part_env("sge").items():
        monkeypatch.setenv(name, value)


def our_jobs() -> dict[str, str]:
    """{job id: state} of this user's jobs that Grid Engine lists now: a job's
    number, or ``<number>.<task>`` for each task of an array job (the id xqute
    gives a member of an array)."""
    out = subprocess.run(
        ["qstat", "-xml", "-u", getpass.getuser()],
        capture_output=True, text=True, check=True,
    ).stdout
    listed = {}
    for entry in ET.fromstring(out).iter("job_list"):
        number, state = entry.findtext("JB_job_number"), entry.findtext("state")
        tasks = entry.findtext("tasks")
        if not tasks:
            listed[number] = state
            continue
        for first, last, step in parse_task_ranges(tasks):  # "1-10:1", "3", "1,4-9:1"
            for task in range(first, last + 1, step):
                listed[f"{number}.{task}"] = state
    return listed


def counting_wrapper(folder: Path, command: str, log: Path) -> str:
    """A wrapper that logs each call of ``command`` and execs the real one."""
    real = shutil.which(command)
    assert real, f"{command} is not on PATH"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"counting-{command}"
    path.write_text(
        f"#!/bin/sh\necho \"$@\" >> {shlex.quote(str(log))}\nexec {shlex.quote(real)} \"$@\"\n"
    )
    path.chmod(0o755)
    return str(path)


async def wait_for(predicate, what: str, limit: float = 120.0):
    """Poll ``predicate`` (async) until true; fail after a generous ``limit``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting for {what} after {limit:.0f} s")
        await asyncio.sleep(0.2)


async def test_success_and_stdout(workdir):
    xq = Xqute("sge", workdir=workdir, forks=3)
    for i in range(3):
        await xq.feed(["echo", f"hello {i}", "from sge"], envs={"GREETING": "hi there"})
    await xq.feed(["bash", "-c", 'echo "$GREETING" >&2'], envs={"GREETING": "it's me"})
    await xq.run_until_complete()
    for i in range(3):
        job = xq.jobs[i]
        assert await job.get_rc() == 0
        assert await job.get_status(refresh=True) == JobStatus.FINISHED
        assert Path(job.stdout_file).read_text() == f"hello {i} from sge\n"
        # a job number, or <number>.<task> when the jobs went as one array
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)?", await job.get_jid())
    assert Path(xq.jobs[3].stderr_file).read_text() == "it's me\n"
    # Grid Engine's own output files went to the metadir, not the cwd
    assert Path(xq.jobs[0].metadir, "job.sge.stdout").exists()


async def test_failure_rc(workdir):
    xq = Xqute("sge", workdir=workdir, forks=2)
    await xq.feed(["bash", "-c", "echo oops >&2; exit 3"])
    await xq.feed(["/no/such/program"])
    await xq.run_until_complete()
    assert await xq.jobs[0].get_rc() == 3
    assert await xq.jobs[0].get_status(refresh=True) == JobStatus.FAILED
    assert "oops" in Path(xq.jobs[0].stderr_file).read_text()
    assert await xq.jobs[1].get_rc() == 127


async def test_directives_reach_grid_engine(workdir, tmp_path):
    cwd = tmp_path / "run here"
    cwd.mkdir()
    xq = Xqute(
        "sge",
        workdir=workdir,
        jobname_prefix="my.run",
        scheduler_opts={
            "cwd": str(cwd),
            "l": ["h_rt=600", "h_vmem=2G"],
            "notify": True,
            "p": -10,
            "v": 'FLAVOUR="sweet and sour"',  # qsub reads the quotes
            "pe": "smp 2",  # two arguments, as a #$ line written by hand
            "hold_jid": None,  # None leaves the flag out
        },
    )
    # the job asks Grid Engine about itself
    await xq.feed(["bash", "-c", 'pwd; echo "FLAVOUR=$FLAVOUR"; qstat -j "$JOB_ID"'])
    await xq.run_until_complete()
    job = xq.jobs[0]
    assert await job.get_rc() == 0, Path(job.stderr_file).read_text()
    out = Path(job.stdout_file).read_text()
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    assert out.splitlines()[0] == str(cwd)
    assert "FLAVOUR=sweet and sour" in out
    assert fields["hard resource_list"] == "h_rt=600,h_vmem=2G"
    assert fields["notify"] == "TRUE"
    assert fields["priority"] == "-10"
    assert fields["cwd"] == str(cwd)
    assert fields["parallel environment"] == "smp range: 2"
    assert "jid_predecessor_list" not in out  # hold_jid=None: no -hold_jid
    assert fields["job_name"] == xq.scheduler.job_name(job)
    assert fields["job_name"].startswith("my.run-") and fields["job_name"].endswith("-0")
    assert fields["stdout_path_list"].endswith(f"{job.metadir}/job.sge.stdout")


def marked_sleep(seconds: int) -> tuple[list[str], str]:
    """A command that sleeps in a child process, and a marker found in its
    bash's command line (to check that nothing of it is left running)."""
    marker = f"xqute-sge-test-{uuid.uuid4().hex[:12]}"
    return ["bash", "-c", f"sleep {seconds}; : {marker}"], marker


async def nothing_left_running(marker: str) -> None:
    async def gone():
        return not processes_with(marker)

    await wait_for(gone, f"the processes of {marker} to end", limit=60)


async def test_job_deleted_from_outside(workdir):
    xq = Xqute("sge", workdir=workdir)
    cmd, marker = marked_sleep(120)
    job = await xq.feed(cmd)
    run = asyncio.ensure_future(xq.run_until_complete())
    await wait_for(lambda: _is_running(job), "the job to start")
    jid = await job.get_jid()
    subprocess.run(["qdel", jid], check=True, capture_output=True)
    await asyncio.wait_for(run, 120)
    assert await job.get_rc() == -3
    assert await job.get_status(refresh=True) == JobStatus.FAILED
    stderr = Path(job.stderr_file).read_text()
    assert f"Grid Engine job {jid}" in stderr
    assert "failed 100" in stderr and "qdel" in stderr
    assert jid not in our_jobs()
    # the command went with its job, not only the wrapper
    await nothing_left_running(marker)


async def _is_running(job) -> bool:
    return await job.read_status_file() == JobStatus.RUNNING


async def test_job_deleted_from_outside_before_it_started(workdir):
    # held (hqw): it never starts, so qacct never gets a record of it
    xq = Xqute("sge", workdir=workdir, scheduler_opts={"h": True, "qacct_wait": 1})
    job = await xq.feed(["true"])
    run = asyncio.ensure_future(xq.run_until_complete())

    async def submitted():
        jid = job._jid
        return jid is not None and our_jobs().get(jid) == "hqw"

    await wait_for(submitted, "the held job to be listed")
    subprocess.run(["qdel", job._jid], check=True, capture_output=True)
    await asyncio.wait_for(run, 120)
    assert await job.get_rc() == -3
    assert "has no record of it" in Path(job.stderr_file).read_text()


async def test_job_over_h_rt(workdir):
    xq = Xqute("sge", workdir=workdir, scheduler_opts={"l": "h_rt=2"})
    cmd, marker = marked_sleep(60)
    job = await xq.feed(cmd)
    await xq.run_until_complete()
    assert await job.get_rc() == -3
    stderr = Path(job.stderr_file).read_text()
    assert "failed 37" in stderr and "h_rt" in stderr
    assert "exit_status 137" in stderr
    await nothing_left_running(marker)


async def test_error_state_is_reported_not_waited_on(workdir, tmp_path):
    # Grid Engine cannot open this output file: the job goes to Eqw
    bad = tmp_path / "no such dir" / "out"
    xq = Xqute("sge", workdir=workdir, scheduler_opts={"o": str(bad)})
    job = await xq.feed(["true"])
    await asyncio.wait_for(xq.run_until_complete(), 120)
    assert await job.get_rc() == -3
    stderr = Path(job.stderr_file).read_text()
    assert "error state" in stderr and "can't open output file" in stderr
    # and it was deleted, not left in Eqw
    assert (await job.get_jid()) not in our_jobs()


async def test_refused_submission_fails_with_qsub_message(workdir):
    xq = Xqute("sge", workdir=workdir, scheduler_opts={"l": "no_such_resource=1"})
    job = await xq.feed(["true"])
    await xq.run_until_complete()
    assert await job.get_rc() == -2
    stderr = Path(job.stderr_file).read_text()
    assert 'unknown resource "no_such_resource"' in stderr


async def test_transient_qsub_error_is_retried(workdir, tmp_path):
    calls = tmp_path / "qsub-calls"
    fake = tmp_path / "fake-flaky-qsub"
    # refuses the first call like an unreachable qmaster, then runs the real qsub
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo call >> {shlex.quote(str(calls))}
        if [ "$(wc -l < {shlex.quote(str(calls))})" -le 1 ]; then
            echo 'error: commlib error: got select error (Connection refused)' >&2
            echo 'Unable to run job: unable to send message to qmaster using port 6444 on host "vm": got send error' >&2
            exit 1
        fi
        exec qsub "$@"
        """))
    fake.chmod(0o755)
    xq = Xqute("sge", workdir=workdir, scheduler_opts={"qsub": str(fake)})
    job = await xq.feed(["echo", "second time lucky"])
    await xq.run_until_complete()
    assert calls.read_text().count("call") == 2
    assert await job.get_rc() == 0
    assert Path(job.stdout_file).read_text() == "second time lucky\n"


async def test_failed_job_is_retried(workdir, tmp_path):
    marker = tmp_path / "tried once"
    xq = Xqute("sge", workdir=workdir, error_strategy="retry", num_retries=2)
    job = await xq.feed(
        ["bash", "-c", f"if [ -e {shlex.quote(str(marker))} ]; then echo ok; "
                       f"else touch {shlex.quote(str(marker))}; exit 9; fi"]
    )
    await xq.run_until_complete()
    assert await job.get_rc() == 0
    assert job.trial_count == 1
    assert Path(job.metadir, "job.retry", "0", "job.rc").read_text().strip() == "9"
    assert Path(job.stdout_file).read_text() == "ok\n"


async def test_halt_deletes_the_other_jobs(workdir):
    xq = Xqute("sge", workdir=workdir, forks=2, error_strategy="halt")
    cmd, marker = marked_sleep(300)
    sleeper = await xq.feed(cmd)
    await xq.feed(["bash", "-c", "sleep 3; exit 1"])
    await asyncio.wait_for(xq.run_until_complete(), 180)
    assert await sleeper.get_status(refresh=True) == JobStatus.FAILED
    assert sleeper._jid not in our_jobs()
    await nothing_left_running(marker)


MANAGER = textwrap.dedent(
    """
    import asyncio, sys
    from xqute import Xqute

    async def main(workdir, njobs, marker):
        # small.q has 2 slots: the other jobs wait in the queue
        xq = Xqute("sge", workdir=workdir, forks=njobs, scheduler_opts={"q": "small.q"})
        for _ in range(njobs):
            await xq.feed(["bash", "-c", f"sleep 300; : {marker}"])
        await xq.run_until_complete()
        print("run ended", flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)


async def test_sigterm_to_the_manager_deletes_all_its_jobs(workdir, tmp_path):
    njobs = 4  # 2 run on small.q's 2 slots, 2 wait: both kinds must be deleted
    script = tmp_path / "manager.py"
    script.write_text(MANAGER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XQUTE_LOG_LEVEL": "INFO"}
    marker = f"xqute-sge-test-{uuid.uuid4().hex[:12]}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(workdir), str(njobs), marker,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    jid_files = [workdir / str(i) / "job.jid" for i in range(njobs)]

    async def all_listed():
        if not all(f.exists() and f.read_text().strip() for f in jid_files):
            return False
        listed = our_jobs()
        states = [listed.get(f.read_text().strip()) for f in jid_files]
        return None not in states and sum("r" in s for s in states) >= 1

    await wait_for(all_listed, "all jobs to be submitted and one to run")
    jids = [f.read_text().strip() for f in jid_files]
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert b"run ended" in out, err.decode()
    assert b"SIGTERM" in err
    listed = our_jobs()
    assert [jid for jid in jids if jid in listed] == []
    for i in range(njobs):
        assert (workdir / str(i) / "job.status").read_text().strip() == str(JobStatus.FAILED)
    await nothing_left_running(marker)


async def test_50_jobs_one_status_call_per_round(workdir, tmp_path):
    log = tmp_path / "calls.log"
    log.touch()
    qstat = counting_wrapper(tmp_path / "bin", "qstat", log)
    qacct_log = tmp_path / "qacct.log"
    qacct_log.touch()
    qacct = counting_wrapper(tmp_path / "bin", "qacct", qacct_log)
    xq = Xqute("sge", workdir=workdir, forks=50,
               scheduler_opts={"qstat": qstat, "qacct": qacct, "usage": "wait"})
    for i in range(50):
        await xq.feed(["echo", str(i)])
    await xq.run_until_complete()
    assert [await job.get_rc() for job in xq.jobs] == [0] * 50
    assert [Path(job.stdout_file).read_text() for job in xq.jobs] == [f"{i}\n" for i in range(50)]
    rounds = xq.scheduler.query_rounds
    qstat_calls = log.read_text().splitlines()
    # every call is the one batched question, never one per job
    assert all(call.startswith("-xml") for call in qstat_calls)
    assert 1 <= len(qstat_calls) <= rounds
    assert len(qstat_calls) < 50
    # usage figures come from qacct: at most once per round (with the status
    # question) plus, with usage="wait", the run's end (once, and once more
    # for what it lacked)
    qacct_calls = qacct_log.read_text().splitlines()
    assert len(qacct_calls) <= rounds + 2
    assert len(qacct_calls) < 10
    from_qacct = [job for job in xq.jobs if job.usage["sources"].get("cpu_s", "").startswith("qacct")]
    assert len(from_qacct) >= 25


async def test_scheduler_is_found_by_name(workdir):
    xq = Xqute("sge", workdir=workdir)
    assert isinstance(xq.scheduler, SgeScheduler)
    assert xq.scheduler.name == "sge"


async def test_a_job_cancelled_while_queued_does_not_storm_grid_engine(workdir, tmp_path):
    """One job deleted while queued waits for qacct (which lags) for end_grace;
    meanwhile Grid Engine is asked at most once per query interval: at most
    2*W/5 + 5 status calls (qstat and qacct) for a run of W seconds."""
    log = tmp_path / "calls.log"
    log.touch()
    qstat = counting_wrapper(tmp_path / "bin", "qstat", log)
    qacct = counting_wrapper(tmp_path / "bin", "qacct", log)
    # held (hqw) at submission: the test releases all but one, and deletes that one
    xq = Xqute("sge", workdir=workdir, forks=8,
               scheduler_opts={"h": True, "qstat": qstat, "qacct": qacct})
    jobs = [await xq.feed(["sleep", "2"]) for _ in range(6)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    run = asyncio.ensure_future(xq.run_until_complete())

    async def all_held():
        listed = our_jobs()
        return all(job._jid and listed.get(job._jid) == "hqw" for job in jobs)

    await wait_for(all_held, "the held jobs to be listed")
    subprocess.run(["qdel", jobs[0]._jid], check=True, capture_output=True)
    subprocess.run(["qrls", *(job._jid for job in jobs[1:])], check=True, capture_output=True)
    await asyncio.wait_for(run, 180)
    wall = loop.time() - started
    assert [await job.get_rc() for job in jobs[1:]] == [0] * 5
    assert await jobs[0].get_rc() == -3
    status_calls = log.read_text().splitlines()
    print(f"Grid Engine: {len(status_calls)} status calls in {wall:.1f} s (bound {2 * wall / 5 + 5:.0f})")
    assert len(status_calls) <= 2 * wall / 5 + 5, (wall, status_calls)


# ------------------------------------- a rerun behind finished jobs (issue 13)
RERUN_MANAGER = textwrap.dedent(
    """
    import asyncio, json, sys
    from xqute import Xqute

    async def main(workdir, log, opts):
        xq = Xqute("sge", workdir=workdir, forks=4, scheduler_opts=opts)
        script = (
            f'echo "$XQUTE_JOB_INDEX start $EPOCHREALTIME" >> "{log}"; sleep 4; '
            f'echo "$XQUTE_JOB_INDEX end $EPOCHREALTIME" >> "{log}"'
        )
        for _ in range(12):
            # xqute expands $NAME in a list command's arguments: bash's own are \\$
            await xq.feed(["bash", "-c", script.replace("$", "\\\\$")])
        await xq.run_until_complete()
        print("rcs", [await j.get_rc() for j in xq.jobs], flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
    """
)


def submission_logger(folder: Path, log: Path) -> str:
    """A wrapper around the real qsub that logs ``<time> <job index> <job number>``
    per call (the time taken before the call; the index is the name of the folder
    of the submitted wrapper script, the job's metadir)."""
    real = shutil.which("qsub")
    assert real, "qsub is not on PATH"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "logging-qsub"
    path.write_text(
        "#!/bin/bash\n"
        "when=$(date +%s.%N)\n"
        "for script; do :; done\n"
        f"out=$({shlex.quote(real)} \"$@\"); rc=$?\n"
        f'echo "$when $(basename "$(dirname "$script")") $out" >> {shlex.quote(str(log))}\n'
        'printf "%s\\n" "$out"\n'
        "exit $rc\n"
    )
    path.chmod(0o755)
    return str(path)


def submissions(log: Path) -> list[tuple[float, str, str]]:
    """(time, job index, job number) per qsub call, in the order made
    (the id is empty for a refused call)."""
    found = []
    for line in log.read_text().splitlines():
        when, index, *jid = line.split()
        found.append((float(when), index, jid[0] if jid else ""))
    return found


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most of ``intervals`` open at one time (an end before a start at a tie)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


async def wait_until_out_of_grid_engine(jids: list[str], limit: float = 300) -> list[str]:
    """Wait for the jobs ``jids`` to end by themselves; those Grid Engine still
    lists after ``limit`` seconds are deleted and returned."""
    jids = [jid for jid in jids if jid]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if not set(jids) & set(our_jobs()):
            return []
        await asyncio.sleep(1)
    left = [jid for jid in jids if jid in our_jobs()]
    if left:
        subprocess.run(["qdel", *left], capture_output=True, timeout=60)
    return left


async def test_a_rerun_adopts_jobs_left_running_behind_finished_ones_at_once(workdir, tmp_path):
    """The manager (12 jobs, forks 4) is SIGKILLed while Grid Engine has jobs 4-7
    (0-3 done, 8-11 not submitted). A rerun at once, with the same 12 commands,
    follows 4-7 from its start: they are never submitted again and count against
    forks, though 0-3 (finished, so fed to run again) come first in its queue.

    all.q has 32 slots, so only forks keeps at most 4 jobs running: it is
    checked on the jobs running and on those handed to Grid Engine (from qsub
    to their end)."""
    log = tmp_path / "log"
    log.touch()
    submit_log = tmp_path / "submissions.log"
    submit_log.touch()
    qsub = submission_logger(tmp_path / "bin", submit_log)
    # asked every second or two, so that the kill finds 4-7 listed and 8 not yet;
    # one qsub per job: this is about the manager holding jobs back for forks
    # (as an array all 12 go at once, Grid Engine throttling them: see
    # tests/test_sge_arrays.py for the rerun of a manager killed then)
    opts = {"qsub": qsub, "query_interval": 1, "query_interval_max": 2, "array": False}
    args = [sys.executable, "-c", RERUN_MANAGER, str(workdir), str(log), json.dumps(opts)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    jid_files = [workdir / str(i) / "job.jid" for i in range(12)]
    first = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    second = None
    try:
        async def four_to_seven_submitted():
            assert first.returncode is None, await first.communicate()
            return all(f.exists() and f.read_text().strip() for f in jid_files[4:8])

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 180
        while not await four_to_seven_submitted():  # polled closely: the window is a few s
            assert loop.time() < deadline, "jobs 4-7 were not all submitted"
            await asyncio.sleep(0.05)
        first.kill()
        await first.wait()
        assert not jid_files[8].exists(), "the kill came too late: job 8 was submitted"
        ended = {line.split()[0] for line in log.read_text().splitlines() if " end " in line}
        assert ended == {"0", "1", "2", "3"}, log.read_text()
        left = [f.read_text().strip() for f in jid_files[4:8]]
        listed = our_jobs()
        assert all(listed.get(jid) in ("r", "t", "qw") for jid in left), (left, listed)

        second = await asyncio.create_subprocess_exec(
            *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(second.communicate(), 600)
        assert second.returncode == 0, err.decode()
        assert b"rcs [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" in out, (out, err)
        assert [f.read_text().strip() for f in jid_files[4:8]] == left  # the same jobs
    finally:
        for manager in (first, second):
            if manager is not None and manager.returncode is None:
                manager.kill()
                await manager.wait()
        stuck = await wait_until_out_of_grid_engine([jid for _, _, jid in submissions(submit_log)])
    assert not stuck, f"jobs still listed by Grid Engine (deleted): {stuck}"

    lines = log.read_text().splitlines()
    starts = [line.split()[0] for line in lines if " start " in line]
    # 0-3 ended before the kill and were fed again: twice; every other job once
    assert [starts.count(str(i)) for i in range(4, 12)] == [1] * 8, lines
    assert [starts.count(str(i)) for i in range(4)] == [2] * 4, lines
    subs = submissions(submit_log)
    submitted = [index for _, index, jid in subs if jid]  # refusals aside
    assert [submitted.count(str(i)) for i in range(12)] == [2] * 4 + [1] * 8, subs

    def times(index, what):
        return sorted(float(line.split()[2]) for line in lines
                      if line.split()[:2] == [str(index), what])

    running, in_grid_engine = [], []
    for i in range(12):
        ends = times(i, "end")
        running += zip(times(i, "start"), ends)
        in_grid_engine += zip(sorted(when for when, index, jid in subs if jid and index == str(i)), ends)
    assert len(running) == len(in_grid_engine) == 16
    assert peak_overlap(running) <= 4, lines
    assert peak_overlap(in_grid_engine) <= 4, (subs, lines)
