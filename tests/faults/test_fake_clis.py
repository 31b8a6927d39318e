"""Scheduler commands that misbehave, which no real scheduler does on demand.

Each scheduler command is wrapped in ``fake_bin/fake-flaky`` (a symlink
``fake-flaky-<command>``): each call either runs the real command against the
real cluster of ``scripts/<part>.sh`` or, when its turn says so, fails with an
error (non-zero exit), hangs, prints garbage, loses the reply of a request that
went through, or acts as if the binary were gone. What must hold whatever they
do: every call is bounded by ``command_timeout``, refusals that may pass are
retried with backoff, a job that cannot be run gets a clear error in its
stderr, no job is taken as ended on a misbehaving command's word, and the run
ends (each run is wrapped in ``asyncio.wait_for`` with a generous bound).

The "missing binary" tests need no cluster: the command is removed after the
scheduler found it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.realparts import part_env, require
from xqute import JobStatus, Xqute
from xqute.utils import run_command

FAKE_FLAKY = Path(__file__).parent / "fake_bin" / "fake-flaky"
# generous: the runs below take seconds
RUN_BOUND = 180


# ------------------------------------------------------------------ helpers
class Flaky:
    """fake-flaky wrappers around real commands, their settings and call log."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = folder
        self.folder.mkdir(exist_ok=True)
        self.log = folder / "calls.log"
        self.log.touch()
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("FAKE_FLAKY_LOG", str(self.log))
        monkeypatch.setenv("FAKE_FLAKY_DIR", str(folder))
        monkeypatch.setenv("FAKE_FLAKY_SEED", "8")

    def wrap(self, *commands: str) -> dict[str, str]:
        """{command: path of its fake-flaky wrapper}."""
        paths = {}
        for command in commands:
            assert shutil.which(command), f"{command} is not installed"
            link = self.folder / f"fake-flaky-{command}"
            if not link.exists():
                link.symlink_to(FAKE_FLAKY)
            paths[command] = str(link)
        return paths

    def script(self, command: str, *outcomes: str) -> None:
        """The first calls of ``command`` get these outcomes, in order."""
        self.monkeypatch.setenv(f"FAKE_FLAKY_SCRIPT_{command}", " ".join(outcomes))

    def randomly(self, percent: int, modes: str = "fail hang garbage", command: str | None = None) -> None:
        """After its script, each call misbehaves with this chance."""
        suffix = f"_{command}" if command else ""
        self.monkeypatch.setenv(f"FAKE_FLAKY_PERCENT{suffix}", str(percent))
        self.monkeypatch.setenv(f"FAKE_FLAKY_MODES{suffix}", modes)

    def calls(self, command: str | None = None) -> list[tuple[float, str, str, str]]:
        """(time, command, outcome, args) of each call, in order."""
        found = []
        for line in self.log.read_text().splitlines():
            stamp, name, outcome, *rest = line.split(" ", 3)
            if command is None or name == command:
                found.append((float(stamp), name, outcome, rest[0] if rest else ""))
        return found

    def outcomes(self, command: str) -> list[str]:
        return [outcome for _, _, outcome, _ in self.calls(command)]


@pytest.fixture
def flaky(tmp_path, monkeypatch) -> Flaky:
    return Flaky(tmp_path / "fake-bin", monkeypatch)


def gone_after_start(tmp_path: Path, name: str) -> str:
    """A command that exists when the scheduler checks for it (a fake: it only
    exits 0), for the test to remove before it is used."""
    path = tmp_path / f"fake-gone-{name}"
    path.symlink_to(shutil.which("true"))
    return str(path)


async def run_jobs(xq: Xqute, cmds) -> list:
    for cmd in cmds:
        await xq.feed(cmd)
    await asyncio.wait_for(xq.run_until_complete(), RUN_BOUND)
    return xq.jobs


def stderr_of(job) -> str:
    return Path(job.stderr_file).read_text() if Path(job.stderr_file).exists() else ""


def stdout_of(job) -> str:
    return Path(job.stdout_file).read_text() if Path(job.stdout_file).exists() else ""


def backoff_gaps(stamps: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(stamps, stamps[1:])]


# ------------------------------------------------------------------ missing binaries
@pytest.mark.parametrize("backend, command, others", [
    ("slurm", "sbatch", ("squeue", "scancel")),
    ("sge", "qsub", ("qstat", "qdel")),
])
async def test_a_scheduler_command_removed_mid_run_fails_each_job_with_its_name(
    workdir, tmp_path, backend, command, others
):
    opts = {name: gone_after_start(tmp_path, name) for name in (command, *others)}
    xq = Xqute(backend, workdir=workdir, forks=2, scheduler_opts={**opts, "submit_retries": 3})
    for i in range(3):
        await xq.feed(["echo", str(i)])  # the first feed checks the binaries
    os.unlink(opts[command])
    await asyncio.wait_for(xq.run_until_complete(), RUN_BOUND)
    for job in xq.jobs:
        assert job.status == JobStatus.FAILED
        assert await job.get_rc() == -2
        message = stderr_of(job)
        assert f"submission to {backend} failed" in message
        assert opts[command] in message and "not found" in message


async def test_a_gcloud_removed_mid_run_fails_each_job_with_its_name(batch, tmp_path):
    env = batch
    gcloud = gone_after_start(tmp_path, "gcloud")
    xq = Xqute(
        "gbatch",
        workdir=f"gs://{env['XQUTE_TEST_BUCKET']}/tests/faults-{uuid.uuid4().hex[:8]}/wd",
        scheduler_opts={"project": env["CLOUDSDK_CORE_PROJECT"],
                        "location": env["CLOUDSDK_BATCH_LOCATION"], "gcloud": gcloud},
    )
    await xq.feed(["true"])
    os.unlink(gcloud)
    await asyncio.wait_for(xq.run_until_complete(), RUN_BOUND)
    job = xq.jobs[0]
    assert await job.get_rc() == -2
    message = await job.stderr_file.a_read_text()
    assert "submission to gbatch failed" in message and gcloud in message and "not found" in message


@pytest.mark.parametrize("kind", ["folder", "symlink loop", "name too long"])
async def test_a_scheduler_command_that_cannot_be_executed_is_a_clear_error(tmp_path, kind):
    """Whatever stands at the command's path, a call returns an error naming
    it, never an exception out of a status round."""
    if kind == "folder":
        path = tmp_path / "fake-folder-squeue"
        path.mkdir()
    elif kind == "symlink loop":
        path = tmp_path / "fake-loop-squeue"
        path.symlink_to(tmp_path / "fake-loop-other")
        (tmp_path / "fake-loop-other").symlink_to(path)
    else:
        path = tmp_path / ("fake-" + "x" * 300)
    result = await run_command(str(path), "-h")
    assert result.rc in (126, 127)
    assert str(path) in result.stderr


# ------------------------------------------------------------------ Slurm
@pytest.fixture
def slurm(monkeypatch):
    require("slurm")
    for name, value in part_env("slurm").items():
        monkeypatch.setenv(name, value)


SLURM_COMMANDS = ("sbatch", "squeue", "sacct", "scancel")


def our_slurm_jobs(prefix: str) -> list[str]:
    """Names of the Slurm jobs still queued or running whose name starts with prefix."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%200j"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [name for name in out.split() if name.startswith(prefix)]


async def test_slurm_commands_that_fail_hang_and_print_garbage_in_turn(slurm, workdir, flaky):
    """One job; sbatch fails (a hanging one: test_slurm.py and the lost reply
    below), then works; squeue hangs, prints garbage, fails, prints garbage
    again; sacct prints garbage. The job runs once, ends as its command did,
    and nothing misbehaving is taken for its end."""
    paths = flaky.wrap(*SLURM_COMMANDS)
    flaky.script("sbatch", "fail")
    flaky.script("squeue", "hang", "garbage", "fail", "garbage", "hang", "garbage")
    flaky.script("sacct", "garbage", "garbage", "garbage", "garbage")
    xq = Xqute(
        "slurm", workdir=workdir, forks=1,
        scheduler_opts={**paths, "command_timeout": 1, "query_interval": 0.3, "end_grace": 1,
                        "poll_interval": 0.2},
    )
    (job,) = await run_jobs(xq, [["bash", "-c", "sleep 4; echo done"]])

    assert job.status == JobStatus.FINISHED, stderr_of(job)
    assert await job.get_rc() == 0
    assert stdout_of(job).strip() == "done"
    assert "xqute:" not in stderr_of(job)
    sbatch = flaky.calls("sbatch")
    assert [outcome for _, _, outcome, _ in sbatch] == ["fail", "ok"]
    assert backoff_gaps([stamp for stamp, *_ in sbatch])[0] >= 1.0  # backoff
    assert {"hang", "garbage", "fail"} <= set(flaky.outcomes("squeue"))


@pytest.mark.parametrize("still_running", [True, False])
async def test_slurm_sbatch_whose_reply_is_lost_is_not_submitted_twice(
    slurm, workdir, flaky, tmp_path, still_running
):
    """sbatch reaches Slurm but its answer never comes back (it hangs after
    submitting): the retry finds the job by name instead of submitting it again,
    whether the job still runs or has already ended by then (before the fix,
    an ended one was submitted again and ran a second time, after the run)."""
    paths = flaky.wrap(*SLURM_COMMANDS)
    flaky.script("sbatch", "lost")
    runs = tmp_path / "runs"
    xq = Xqute("slurm", workdir=workdir, scheduler_opts={**paths, "command_timeout": 2, "query_interval": 0.3})
    naptime = 4 if still_running else 0
    (job,) = await run_jobs(xq, [["bash", "-c", f"sleep {naptime}; echo ran >> '{runs}'"]])
    assert await job.get_rc() == 0
    assert flaky.outcomes("sbatch") == ["lost"]  # the retry asked squeue, not sbatch
    assert runs.read_text() == "ran\n"


async def test_slurm_commands_misbehaving_at_random_the_run_still_ends(slurm, workdir, flaky):
    """A quarter of all Slurm calls fail, hang or print garbage, at random:
    every job still ends, as its command did or, if it could not be submitted,
    with rc -2 and the reason; none is left in Slurm."""
    paths = flaky.wrap(*SLURM_COMMANDS)
    flaky.randomly(25)
    # at least one of each, whatever the draws
    flaky.script("sbatch", "fail")
    flaky.script("squeue", "garbage", "hang")
    prefix = f"flaky{uuid.uuid4().hex[:6]}"
    xq = Xqute(
        "slurm", workdir=workdir, forks=4, jobname_prefix=prefix,
        scheduler_opts={**paths, "command_timeout": 1, "query_interval": 0.3, "submit_retries": 6},
    )
    cmds = [["bash", "-c", f"sleep 1; echo job{i}; exit {3 if i % 3 == 2 else 0}"] for i in range(6)]
    jobs = await run_jobs(xq, cmds)

    for i, job in enumerate(jobs):
        rc = await job.get_rc()
        assert JobStatus.is_final(job.status)
        if rc == -2:  # sbatch printed garbage: not a job id, refused for good
            assert "submission to slurm failed" in stderr_of(job), stderr_of(job)
        else:
            assert rc == (3 if i % 3 == 2 else 0), stderr_of(job)
            assert stdout_of(job).strip() == f"job{i}"
    assert any(outcome != "ok" for outcome in flaky.outcomes("squeue"))
    assert our_slurm_jobs(prefix) == []


async def test_slurm_scancel_that_hangs_still_ends_the_run_and_says_so(slurm, workdir, flaky, caplog):
    """Halting the run while scancel hangs: each call gives up after
    command_timeout, the failure is logged as a warning (the jobs may still
    run in Slurm), the jobs are recorded killed and the run ends."""
    paths = flaky.wrap(*SLURM_COMMANDS)
    flaky.randomly(100, "hang", command="scancel")
    prefix = f"nocancel{uuid.uuid4().hex[:6]}"
    xq = Xqute(
        "slurm", workdir=workdir, forks=2, jobname_prefix=prefix,
        scheduler_opts={**paths, "command_timeout": 1, "query_interval": 0.3, "poll_interval": 0.2},
    )
    await xq.feed(["sleep", "60"])

    async def cancel_once_running():
        while not all(job.status == JobStatus.RUNNING for job in xq.jobs):
            await asyncio.sleep(0.1)
        xq.cancel()

    caplog.set_level(logging.WARNING, logger="XQUTE")
    logging.getLogger("XQUTE").propagate = True
    try:
        canceller = asyncio.ensure_future(cancel_once_running())
        await asyncio.wait_for(xq.run_until_complete(), RUN_BOUND)
        await canceller
        assert flaky.outcomes("scancel") == ["hang"]
        assert "scancel failed" in caplog.text and "timed out" in caplog.text
        for job in xq.jobs:
            assert job.status == JobStatus.FAILED
            assert await job.get_rc() == -3
            assert "killed by xqute" in stderr_of(job)
    finally:
        logging.getLogger("XQUTE").propagate = False
        # the real scancel, so no job outlives the test
        jids = [job._jid for job in xq.jobs if job._jid]
        if jids:
            subprocess.run(["scancel", *jids], timeout=60)


# ------------------------------------------------------------------ Grid Engine
@pytest.fixture
def sge(monkeypatch):
    require("sge")
    for name, value in part_env("sge").items():
        monkeypatch.setenv(name, value)


SGE_COMMANDS = ("qsub", "qstat", "qdel", "qacct")


async def test_sge_commands_that_fail_hang_and_print_garbage_in_turn(sge, workdir, flaky):
    """One job; qsub fails (a busy qmaster), then works; qstat hangs, prints
    garbage, fails, prints garbage again; qacct prints garbage. The job runs
    once and ends as its command did."""
    paths = flaky.wrap(*SGE_COMMANDS)
    flaky.script("qsub", "fail")
    flaky.script("qstat", "hang", "garbage", "fail", "garbage", "hang", "garbage")
    flaky.script("qacct", "garbage", "garbage", "garbage")
    xq = Xqute(
        "sge", workdir=workdir, forks=1,
        scheduler_opts={**paths, "command_timeout": 1, "qacct_wait": 1, "poll_interval": 0.2,
                        "query_interval": 0.2},  # every fault in turn within 4 s
    )
    (job,) = await run_jobs(xq, [["bash", "-c", "sleep 4; echo done"]])
    assert job.status == JobStatus.FINISHED, stderr_of(job)
    assert await job.get_rc() == 0
    assert stdout_of(job).strip() == "done"
    qsub = flaky.calls("qsub")
    assert [outcome for _, _, outcome, _ in qsub] == ["fail", "ok"]
    assert backoff_gaps([stamp for stamp, *_ in qsub])[0] >= 1.0
    assert {"hang", "garbage", "fail"} <= set(flaky.outcomes("qstat"))


@pytest.mark.parametrize("still_running", [True, False])
async def test_sge_qsub_whose_reply_is_lost_is_not_submitted_twice(
    sge, workdir, flaky, tmp_path, still_running
):
    """qsub reaches Grid Engine but its answer never comes back: the retry finds
    the job by name in qstat while it runs, or in qacct once it has ended (its
    status file shows the wrapper ran), instead of submitting it again."""
    paths = flaky.wrap(*SGE_COMMANDS)
    flaky.script("qsub", "lost")
    runs = tmp_path / "runs"
    # ended case: qsub's timeout outlasts the job, so it is over when the retry looks
    timeout, naptime = (2, 6) if still_running else (12, 0)
    xq = Xqute(
        "sge", workdir=workdir,
        scheduler_opts={**paths, "command_timeout": timeout, "poll_interval": 0.3},
    )
    (job,) = await run_jobs(xq, [["bash", "-c", f"sleep {naptime}; echo ran >> '{runs}'"]])
    assert await job.get_rc() == 0, stderr_of(job)
    assert flaky.outcomes("qsub") == ["lost"]  # the retry looked the job up, no second qsub
    assert runs.read_text() == "ran\n"


async def test_sge_qdel_that_hangs_still_ends_the_run_and_says_so(sge, workdir, flaky, caplog):
    paths = flaky.wrap(*SGE_COMMANDS)
    flaky.randomly(100, "hang", command="qdel")
    xq = Xqute(
        "sge", workdir=workdir, forks=1,
        scheduler_opts={**paths, "command_timeout": 1, "kill_wait": 1, "poll_interval": 0.2},
    )
    await xq.feed(["sleep", "60"])

    async def cancel_once_running():
        while xq.jobs[0].status != JobStatus.RUNNING:
            await asyncio.sleep(0.1)
        xq.cancel()

    caplog.set_level(logging.WARNING, logger="XQUTE")
    logging.getLogger("XQUTE").propagate = True
    try:
        canceller = asyncio.ensure_future(cancel_once_running())
        await asyncio.wait_for(xq.run_until_complete(), RUN_BOUND)
        await canceller
        assert flaky.outcomes("qdel") == ["hang"]
        assert "timed out" in caplog.text
        job = xq.jobs[0]
        assert job.status == JobStatus.FAILED and await job.get_rc() == -3
        assert "killed by xqute" in stderr_of(job)
    finally:
        logging.getLogger("XQUTE").propagate = False
        jids = [job._jid for job in xq.jobs if job._jid]
        if jids:
            subprocess.run(["qdel", *jids], capture_output=True, timeout=60)


# ------------------------------------------------------------------ Google Batch
@pytest.fixture
def batch(monkeypatch) -> dict:
    require("gbatch")
    env = part_env("gbatch")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


async def test_gcloud_that_fails_hangs_and_prints_garbage_in_turn(batch, flaky):
    """One job through the real gcloud and the Batch API of scripts/gbatch.sh;
    gcloud fails the first submit (try again), then lists print garbage, fail,
    hang. The job runs once and ends as its command did."""
    paths = flaky.wrap("gcloud")
    # gcloud calls: submit, submit, then the lists (and nothing else)
    flaky.script("gcloud", "fail", "ok", "garbage", "fail", "hang")
    xq = Xqute(
        "gbatch",
        workdir=f"gs://{batch['XQUTE_TEST_BUCKET']}/tests/faults-{uuid.uuid4().hex[:8]}/wd",
        scheduler_opts={
            "project": batch["CLOUDSDK_CORE_PROJECT"], "location": batch["CLOUDSDK_BATCH_LOCATION"],
            "gcloud": paths["gcloud"], "command_timeout": 4, "query_interval": 0.5,
            "end_grace": 1, "poll_interval": 0.5,
        },
    )
    (job,) = await run_jobs(xq, [["bash", "-c", "sleep 4; echo done"]])
    assert await job.get_rc() == 0, await job.stderr_file.a_read_text()
    assert (await job.stdout_file.a_read_text()).strip() == "done"
    calls = flaky.calls("gcloud")
    submits = [(stamp, outcome) for stamp, _, outcome, args in calls if " submit " in f" {args} "]
    assert [outcome for _, outcome in submits] == ["fail", "ok"]
    assert submits[1][0] - submits[0][0] >= 1.0  # backoff
    lists = [outcome for _, _, outcome, args in calls if " list " in f" {args} "]
    assert lists[:3] == ["garbage", "fail", "hang"]


@pytest.mark.parametrize("still_running", [True, False])
async def test_gcloud_submit_whose_reply_is_lost_is_not_submitted_twice(
    batch, flaky, tmp_path, still_running
):
    """gcloud's submit reaches Batch but its answer never comes back: the retry
    finds the job by its name and run label (``describe``) while it runs, or
    once it has ended (its status file shows the wrapper ran), instead of
    submitting it again or deleting it to free its name."""
    paths = flaky.wrap("gcloud")
    flaky.script("gcloud", "lost")
    runs = tmp_path / "runs"  # the fake Batch runs jobs on this machine
    workdir = f"gs://{batch['XQUTE_TEST_BUCKET']}/tests/faults-{uuid.uuid4().hex[:8]}/wd"
    # ended case: the submit's timeout outlasts the job, so it is over when the retry looks
    timeout, naptime = (6, 15) if still_running else (20, 0)
    xq = Xqute(
        "gbatch", workdir=workdir,
        scheduler_opts={
            "project": batch["CLOUDSDK_CORE_PROJECT"], "location": batch["CLOUDSDK_BATCH_LOCATION"],
            "gcloud": paths["gcloud"], "command_timeout": timeout, "query_interval": 0.5,
            "end_grace": 1, "poll_interval": 0.5,
        },
    )
    (job,) = await run_jobs(xq, [["bash", "-c", f"sleep {naptime}; echo ran >> '{runs}'"]])
    assert await job.get_rc() == 0, await job.stderr_file.a_read_text()
    calls = flaky.calls("gcloud")
    verbs = [args.split()[2] for _, _, _, args in calls]
    assert verbs.count("submit") == 1 and flaky.outcomes("gcloud")[0] == "lost"
    assert "describe" in verbs and "delete" not in verbs  # looked up, never freed
    assert runs.read_text() == "ran\n"
