"""Usage records, causes and escalating retries on the real Slurm of
``scripts/slurm.sh`` (memory accounting on: jobacct_gather/linux sampling every
second, OverMemoryKill, CR_Core_Memory).

Nothing here is faked: the figures are sacct's, the out-of-memory kill is
slurmstepd's. Counting wrappers (``count_calls``) log each Slurm call and exec
the real binary.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from tests.test_slurm import calls, count_calls, read, run, slurm, slurm_cli  # noqa: F401
import pytest

from xqute.schedulers.slurm_scheduler import (
    SlurmScheduler,
    parse_sacct_duration,
    parse_sacct_memory,
)

# Python holding ``mb`` megabytes (touched, so they count in RSS) long enough
# for the accounting, sampling every second, to see them; then ``cpu`` seconds
# of CPU burnt while holding them.
HOLD = (
    "import time\n"
    "block = b'\\x01' * ({mb} * 2**20)\n"
    "start = time.process_time()\n"
    "while time.process_time() - start < {cpu}: pass\n"
    "time.sleep({sleep})\n"
)


def hold(mb: int, cpu: float = 0.0, sleep: float = 3.0) -> list[str]:
    return [sys.executable, "-c", HOLD.format(mb=mb, cpu=cpu, sleep=sleep)]


def node_name() -> str:
    return slurm_cli("sinfo", "-h", "-N", "-o", "%N").split()[0]


def usage_of(path) -> dict:
    return json.loads(read(path))


async def test_a_job_over_its_memory_is_oom_and_retried_with_twice_the_memory(slurm, workdir):
    """150 MB in a job that asked for 100M: slurmstepd kills it (FAILED, signal
    9, "Exceeded job memory limit" in its stderr; the wrapper dies with it, so
    no rc is recorded). Cause oom; the retry asks for 200M, which suffices."""
    xq = await run(
        workdir, [hold(150)], forks=1, error_strategy="retry", num_retries=1,
        resources={"memory": "100M"},
        query_interval=1, end_grace=1, usage="wait",
    )
    job = xq.jobs[0]
    first = usage_of(job.metadir / "job.retry" / "0" / "job.usage")
    assert first["cause"] == "oom", first
    assert first["requested"]["memory"] == "100M"
    # sacct saw it pass its request: the batch step's MaxRSS
    assert first["peak_memory_mb"] > 100 and first["sources"]["peak_memory_mb"] == "sacct", first
    assert first["host"] == node_name()
    assert job.trial_count == 1 and await job.get_rc() == 0
    second = await job.get_usage()
    assert second["cause"] == "ok" and second["requested"]["memory"] == "200M", second
    assert 100 < second["peak_memory_mb"] <= 200, second
    assert "#SBATCH --mem=200M" in read(job.metadir / "job.wrapped.slurm").splitlines()


async def test_usage_figures_from_sacct_and_no_more_calls_per_round(slurm, workdir, tmp_path):
    """Four jobs, each holding 200 MB and burning 1.2 s of CPU, ending a few
    seconds apart, run twice: usage on and usage off.

    Each status round costs one call either way: squeue, or (usage on,
    figures due) one sacct that answers the live jobs and the ended ones
    together, and the run's end makes no call: usage on makes no more Slurm
    calls than usage off. Records the rounds did not complete stay
    ``pending``; one later ``complete_usage`` (as ``xqute status
    --fetch-usage`` does) gives every record sacct's peak memory (>= 200 MB),
    CPU time (>= 0.9 s) and node name, in one sacct call.
    """
    cmds = [hold(200, cpu=1.2, sleep=1 + 2 * i) for i in range(4)]
    runs = {}
    for usage in (True, False):
        (tmp_path / str(usage)).mkdir()
        opts, log = count_calls(tmp_path / str(usage))
        xq = await run(
            workdir / str(usage), cmds, forks=4, usage=usage,
            resources={"memory": "400M"}, query_interval=1, **opts,
        )
        assert [await job.get_rc() for job in xq.jobs] == [0] * 4
        sched = xq.scheduler
        squeues, saccts = len(calls(log, "squeue")), len(calls(log, "sacct"))
        assert squeues + saccts == sched.status_calls
        runs[usage] = (sched.query_rounds, squeues, saccts, xq, opts, log)
        print(f"usage={usage}: {sched.query_rounds} rounds, {squeues} squeue, {saccts} sacct")

    rounds, squeues, saccts, xq, _, _ = runs[False]
    assert saccts == 0 and squeues == rounds  # one squeue per round, nothing else
    assert not (xq.jobs[0].metadir / "job.usage").exists()

    rounds, squeues, saccts, xq, opts, log = runs[True]
    # one call per round, the rounds with figures due answered by sacct alone
    assert squeues < rounds and squeues + saccts == rounds, runs[True][:3]
    # the run's end makes no call of its own; a run is paced the same either way
    # (sleeps of 1-7 s), so allow for one round more or less
    assert squeues + saccts <= runs[False][0] + 1, (runs[True][:3], runs[False][:3])
    pending = [job.index for job in xq.jobs if (await job.get_usage()).get("pending")]
    assert pending, "the last job ends after the last round: its figures wait"
    for index in pending:
        record = await xq.jobs[index].get_usage()
        assert record["jid"] == str(xq.jobs[index].jid) and record["sources"]["cpu_s"] == "wrapper"

    later = SlurmScheduler(workdir / "True", **{k: v for k, v in opts.items()})
    before = len(calls(log, "sacct"))
    for _ in range(10):  # slurmdbd may lag a job's end by seconds
        await later.complete_usage(range(4))
        if not any([(await job.get_usage()).get("pending") for job in xq.jobs]):
            break
        await asyncio.sleep(1)
    asked = calls(log, "sacct")[before:]
    # one sacct per try, naming every pending job (or the array they are members of)
    assert asked and all(str(xq.jobs[i].jid).split("_")[0] in asked[0][1] for i in pending), asked
    node = node_name()
    for job in xq.jobs:
        record = await job.get_usage()
        assert "pending" not in record, record
        assert record["peak_memory_mb"] >= 200, record
        assert record["cpu_s"] >= 0.9, record
        assert record["host"] == node, record
        assert record["sources"]["peak_memory_mb"] == "sacct"
        assert record["sources"]["cpu_s"] == "sacct"
        # the wrapper's own timing is kept
        assert record["sources"]["wall_s"] == "wrapper" and record["wall_s"] >= 1
        assert record["cause"] == "ok"


async def test_resources_and_excluded_nodes_reach_slurm(slurm, workdir):
    """A node failure's retry keeps away from the node the trial ran on: its
    #SBATCH lines carry --exclude (merged with the user's own -x), and Slurm
    reads it (scontrol's ExcNodeList)."""
    node = node_name()
    sched = SlurmScheduler(
        workdir, resources={"cpus": 1, "memory": "64M", "time": "5m"}, x="ghost1", hold=True,
    )
    job = await sched.create_job(0, ["true"])
    await sched.queue_job(job)
    job.cause = "node_fail"
    job.usage = {"host": node}
    assert await sched._escalate(job)  # the base's retry step
    assert job.resources.exclude_nodes == (node,)
    head = sched.jobcmd_shebang(job).splitlines()
    for line in ("#SBATCH --cpus-per-task=1", "#SBATCH --mem=64M", "#SBATCH --time=00:05:00",
                 f"#SBATCH --exclude=ghost1,{node}"):
        assert line in head, head
    assert "#SBATCH -x ghost1" not in head

    # Slurm refuses an unknown node in --exclude: keep only the real one
    sched = SlurmScheduler(workdir / "real", resources={"memory": "64M"}, hold=True)
    job = await sched.create_job(0, ["true"])
    await sched.queue_job(job)
    job.resources = job.resources.excluding(node)
    jid = await sched.submit_job(job)
    try:
        shown = slurm_cli("scontrol", "show", "job", jid)
    finally:
        subprocess.run(["scancel", jid], capture_output=True, timeout=60)
    assert f"ExcNodeList={node}" in shown, shown
    assert "MinMemoryNode=64M" in shown, shown


@pytest.mark.parametrize("text, seconds", [
    ("00:01.528", 1.528), ("12:03.5", 723.5), ("00:00:03", 3.0), ("01:02:03", 3723.0),
    ("1-02:03:04", 93784.0), ("", None), ("INVALID", None),
])
def test_sacct_durations(text, seconds):
    """TotalCPU ([DD-][HH:]MM:SS.mmm) and Elapsed ([D-]HH:MM:SS) as sacct prints them."""
    assert parse_sacct_duration(text) == seconds


@pytest.mark.parametrize("text, megabytes", [
    ("170008K", 170008 / 1024), ("300M", 300.0), ("1.50G", 1536.0), ("2097152", 2.0),
    ("0", 0.0), ("100Mn", 100.0), ("100Mc", None), ("", None),
])
def test_sacct_sizes(text, megabytes):
    """MaxRSS and ReqMem as sacct prints them (a bare number is bytes; a
    per-CPU ReqMem of older versions is not a per-node figure)."""
    assert parse_sacct_memory(text) == megabytes


def test_xqute_status_fetch_usage_completes_what_the_run_left_pending(slurm, workdir, tmp_path):
    """`xqute run -s slurm` ends with its last jobs' records pending (no call
    at the run's end); `xqute status --fetch-usage` asks the recorded
    scheduler once and every record then has sacct's figures."""
    commands = tmp_path / "commands"
    commands.write_text(f"{sys.executable} -c 'b = b\"\\x01\" * (60 * 2**20); import time; time.sleep(2)'\n" * 2)
    xqute = [sys.executable, "-m", "xqute"]
    done = subprocess.run(xqute + ["run", "-s", "slurm", "-w", str(workdir), "-f", "2", "-q",
                                   "-o", "query_interval=1", str(commands)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = [usage_of(workdir / str(i) / "job.usage") for i in range(2)]
    assert any(record.get("pending") for record in records), records
    said = ""
    for _ in range(10):  # slurmdbd may lag a job's end by seconds
        shown = subprocess.run(xqute + ["status", "--fetch-usage", "--json", str(workdir)],
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        said += shown.stderr
        records = [usage_of(workdir / str(i) / "job.usage") for i in range(2)]
        if not any(record.get("pending") for record in records):
            break
        time.sleep(1)
    assert "Fetched the scheduler's usage figures of" in said, said
    for record in records:
        assert "pending" not in record and record["sources"]["peak_memory_mb"] == "sacct", record
        assert record["peak_memory_mb"] >= 60, record
    state = json.loads(shown.stdout)
    assert all(job["usage"]["sources"]["cpu_s"] == "sacct" for job in state["jobs"]), state["jobs"]
