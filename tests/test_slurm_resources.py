"""``resources`` on the real Slurm of ``scripts/slurm.sh``: mapped onto #SBATCH
options, seen by Slurm, a raw option winning with one warning."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from tests.test_slurm import read, run, slurm, slurm_cli, squeue_states, wait_for  # noqa: F401
from xqute.defaults import JobStatus
from xqute.schedulers.slurm_scheduler import SlurmScheduler


async def test_resources_become_sbatch_options(workdir):
    sched = SlurmScheduler(workdir, resources={"cpus": 2, "memory": "1.5G", "time": "1h30m", "gpus": 1})
    job = await sched.create_job(0, ["true"])
    await sched.queue_job(job)
    head = sched.jobcmd_shebang(job)
    for line in ("#SBATCH --cpus-per-task=2", "#SBATCH --mem=1536M", "#SBATCH --time=01:30:00",
                 "#SBATCH --gres=gpu:1"):
        assert line in head.splitlines()


async def test_a_raw_option_wins_with_one_warning(workdir, caplog):
    sched = SlurmScheduler(workdir, resources={"cpus": 2, "time": "2h"}, c=4)
    caplog.set_level(logging.WARNING)
    for index in range(3):
        job = await sched.create_job(index, ["true"])
        await sched.queue_job(job)
        head = sched.jobcmd_shebang(job).splitlines()
        assert "#SBATCH -c 4" in head and "#SBATCH --cpus-per-task=2" not in head
        assert "#SBATCH --time=02:00:00" in head
    warnings = [r.message for r in caplog.records if "overrides resources" in r.message]
    assert len(warnings) == 1 and "'c'" in warnings[0]


@pytest.mark.parametrize("spec", [{"cpus": -1}, {"memory": "lots"}, {"time": "0"}, {"disk": "1G"}])
def test_bad_resources_fail_before_any_job(workdir, spec):
    with pytest.raises(ValueError, match="resources"):
        SlurmScheduler(workdir, resources=spec)


def test_resources_over_their_limits_are_refused(workdir):
    with pytest.raises(ValueError, match="resource_limits"):
        SlurmScheduler(workdir, resources={"memory": "8G"}, resource_limits={"memory": "4G"})


async def test_slurm_grants_what_resources_ask(slurm, workdir):
    xq = await run(
        workdir, [["bash", "-c", "echo $SLURM_CPUS_PER_TASK"]] * 2, forks=2,
        resources={"cpus": 2, "memory": "300M", "time": "5m"},
    )
    jids = [await job.get_jid() for job in xq.jobs]
    assert [read(job.stdout_file) for job in xq.jobs] == ["2\n", "2\n"]

    def records() -> dict[str, list[str]]:
        out = slurm_cli("sacct", "-n", "-P", "-X", "-j", ",".join(jids),
                        "-o", "JobID,ReqCPUS,ReqMem,Timelimit")
        return {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines()}

    await wait_for(lambda: set(records()) >= set(jids), timeout=30, what="sacct records")
    for jid in jids:
        cpus, mem, limit = records()[jid]
        assert cpus == "2" and re.fullmatch(r"300M\w?", mem) and limit == "00:05:00", records()[jid]


async def test_a_job_over_its_time_ends_as_timeout_and_is_retried_with_more(slurm, workdir):
    """--time=1 (a minute, Slurm's least); Slurm ends the job at its next check,
    writing "DUE TO TIME LIMIT" into its stderr: cause timeout, and the retry
    asks for 1.5 times the time.

    Alongside it, in a run of its own, a job given the raw ``time`` option
    (``time="1"``) is ended the same way. Slurm checks limits only every 30
    seconds, so the two share one wait of a minute or more."""
    retried, raw = await asyncio.gather(
        run(
            workdir,
            [["bash", "-c", 'if [ -e "$XQUTE_JOB_METADIR/tried" ]; then echo second; '
              'else touch "$XQUTE_JOB_METADIR/tried"; sleep 300; fi']],
            forks=1, error_strategy="retry", num_retries=1,
            resources={"time": "1m"}, resource_limits={"time": "2m"},
        ),
        run(workdir / "raw time option", [["sleep", "600"]], time="1"),
    )
    job = retried.jobs[0]
    first = (job.metadir / "job.retry" / "0" / "job.usage").read_text()
    assert '"cause": "timeout"' in first and '"time": 60' in first
    assert job.trial_count == 1 and await job.get_rc() == 0
    second = await job.get_usage()
    assert second["requested"]["time"] == 90
    assert "#SBATCH --time=00:01:30" in (job.metadir / "job.wrapped.slurm").read_text()

    job = raw.jobs[0]
    assert job.status == JobStatus.FAILED
    assert await job.get_rc() not in (0, -9)
    assert "DUE TO TIME LIMIT" in read(job.stderr_file)
    jid = await job.get_jid()
    assert squeue_states([jid]) == {jid: "TIMEOUT"}
