"""SlurmScheduler against the real one-node Slurm of ``scripts/slurm.sh``.

Tests named ``*_fake_*`` put a fake Slurm command first (one that prints garbage,
hangs, or forgets jobs as squeue does after MinJobAge): those show what the real
cluster cannot be made to do on demand. Everything else runs through the real
slurmctld/slurmd/slurmdbd. Counting wrappers (``count_calls``) log each call and
exec the real binary.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.realparts import ROOT, part_env, require
from xqute import JobStatus, Xqute
from xqute.scheduler import JobQuery
from xqute.schedulers.slurm_scheduler import (
    SlurmScheduler,
    directive_lines,
    format_directive_value,
)

SLURM_COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol")


@pytest.fixture
def slurm(monkeypatch):
    """The real cluster is up; its client environment is set."""
    require("slurm")
    for name, value in part_env("slurm").items():
        monkeypatch.setenv(name, value)


def slurm_cli(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc.stdout


def count_calls(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Wrappers around the real Slurm commands that log ``<time> <name> <args>``
    per call; returns the scheduler options pointing at them and the log."""
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    log.touch()
    opts = {}
    for name in SLURM_COMMANDS:
        real = shutil.which(name)
        assert real, f"{name} not installed"
        shim = shims / name
        shim.write_text(
            "#!/bin/sh\n"
            f'echo "$(date +%s.%N) {name} $*" >> \'{log}\'\n'
            f"exec '{real}' \"$@\"\n"
        )
        shim.chmod(0o755)
        opts[name] = str(shim)
    return opts, log


def calls(log: Path, name: str) -> list[tuple[float, str]]:
    found = []
    for line in log.read_text().splitlines():
        stamp, cmd, *rest = line.split(" ", 2)
        if cmd == name:
            found.append((float(stamp), rest[0] if rest else ""))
    return found


def fake_command(tmp_path: Path, name: str, body: str) -> str:
    """A fake Slurm command (a shell script) for what the real one cannot show."""
    path = tmp_path / f"fake-{name}"
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


async def run(workdir, cmds, forks=None, **opts) -> Xqute:
    """Run ``cmds`` as Slurm jobs to the end; returns the Xqute."""
    error_strategy = opts.pop("error_strategy", "ignore")
    num_retries = opts.pop("num_retries", 3)
    xq = Xqute(
        "slurm",
        workdir=workdir,
        forks=forks or len(cmds),
        error_strategy=error_strategy,
        num_retries=num_retries,
        scheduler_opts=opts,
    )
    for cmd in cmds:
        await xq.feed(cmd)
    await xq.run_until_complete()
    return xq


async def wait_for(predicate, timeout=120.0, what="condition"):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def read(path) -> str:
    return Path(path).read_text()


def squeue_states(jids) -> dict[str, str]:
    out = slurm_cli("squeue", "-h", "-t", "all", "--jobs=" + ",".join(jids), "-o", "%i %T")
    return dict(line.split() for line in out.splitlines())


# ------------------------------------------------------------------ basics
async def test_success_runs_in_slurm_with_its_stdout(slurm, workdir):
    xq = await run(workdir, [["bash", "-c", 'echo "hello from job $SLURM_JOB_ID"']])
    job = xq.jobs[0]
    jid = await job.get_jid()
    assert jid and jid.isdigit()
    assert await job.get_rc() == 0
    assert job.status == JobStatus.FINISHED
    assert read(job.stdout_file) == f"hello from job {jid}\n"
    # Slurm's own output file went to the metadir, none to the current directory
    assert not list(Path.cwd().glob(f"slurm-{jid}.out"))


async def test_failures_keep_their_return_codes(slurm, workdir):
    xq = await run(
        workdir,
        [["bash", "-c", "echo oops >&2; exit 3"], ["no-such-command-xq"], ["true"]],
    )
    rcs = [await job.get_rc() for job in xq.jobs]
    assert rcs == [3, 127, 0]
    assert [job.status for job in xq.jobs] == [JobStatus.FAILED, JobStatus.FAILED, JobStatus.FINISHED]
    assert read(xq.jobs[0].stderr_file).startswith("oops\n")
    assert "command was not found" in read(xq.jobs[1].stderr_file)


async def test_directives_reach_slurm(slurm, workdir, tmp_path):
    cwd = tmp_path / "run here %j"
    cwd.mkdir()
    comment = 'xqute "directive" test \\ with $HOME'
    xq = await run(
        workdir,
        [["pwd"]],
        cwd=str(cwd),
        time="7",
        mem="64M",
        comment=comment,
        cpus_per_task=1,
        no_requeue=True,
        J="custom-name",  # a user's one-letter option replaces xqute's job name
    )
    job = xq.jobs[0]
    assert await job.get_rc() == 0
    assert read(job.stdout_file) == f"{cwd}\n"
    info = slurm_cli("scontrol", "show", "job", await job.get_jid())
    assert "JobName=custom-name" in info
    assert "TimeLimit=00:07:00" in info
    assert re.search(r"MinMemoryNode=64M\b", info)
    assert f"Comment={comment}" in info
    assert "Requeue=0" in info
    assert f"WorkDir={cwd}\n" in info
    assert f"StdOut={job.metadir}/job.stdout\n" in info
    assert f"StdErr={job.metadir}/job.stderr\n" in info


async def test_job_name_is_prefix_workdir_hash_and_index(slurm, workdir):
    """A job alone is named for its index; an array for its first member, and
    a hash of its members."""
    for array in (False, True):
        xq = Xqute("slurm", workdir=workdir / str(array), forks=2, jobname_prefix="xqtest",
                   scheduler_opts={"array": array})
        for _ in range(2):
            await xq.feed(["true"])
        await xq.run_until_complete()
        names = []
        for job in xq.jobs:
            info = slurm_cli("scontrol", "show", "job", await job.get_jid())
            names.append(re.search(r"JobName=(\S+)", info).group(1))
        if array:
            assert names[0] == names[1] == xq.scheduler.array_name(xq.jobs)
            assert re.fullmatch(r"xqtest-[0-9a-f]{8}-0-a[0-9a-f]{6}", names[0])
        else:
            assert names[0] == xq.scheduler.job_name(xq.jobs[0])
            assert re.fullmatch(r"xqtest-[0-9a-f]{8}-0", names[0])
            assert names[1] == names[0][:-1] + "1"


async def test_workdir_with_spaces_quotes_and_percent(slurm, tmp_path):
    workdir = tmp_path / "odd dir 'q' \"d\" %j $x"
    # \$: bash expands it (xqute would paste the path into bash's script)
    xq = await run(workdir, [["bash", "-c", 'echo "\\$XQUTE_JOB_METADIR"']])
    job = xq.jobs[0]
    assert await job.get_rc() == 0
    assert read(job.stdout_file) == f"{job.metadir}\n"


# ------------------------------------------------------- jobs ended by Slurm
async def test_running_job_cancelled_from_outside(slurm, workdir):
    xq = Xqute("slurm", workdir=workdir, forks=1)
    job = await xq.feed(["sleep", "300"])
    await xq.run_until_complete(keep_feeding=True)
    await wait_for(lambda: job.status_file.exists() and read(job.status_file).strip() == str(JobStatus.RUNNING),
                   what="the job to run")
    slurm_cli("scancel", await job.get_jid())
    await xq.stop_feeding()
    assert job.status == JobStatus.FAILED
    assert await job.get_rc() not in (0, -9)
    stderr = read(job.stderr_file)
    assert "CANCELLED" in stderr  # Slurm's own line, in the job's stderr


async def test_pending_job_cancelled_from_outside_fails_with_rc_minus_3(slurm, workdir):
    """It never started, so no wrapper wrote a return code: Slurm's word decides."""
    xq = Xqute(
        "slurm", workdir=workdir, forks=1,
        scheduler_opts={"begin": "now+3600", "query_interval": 1, "end_grace": 1},
    )
    job = await xq.feed(["true"])
    await xq.run_until_complete(keep_feeding=True)
    await wait_for(lambda: job.jid_file.exists(), what="the submission")
    jid = read(job.jid_file).strip()
    assert squeue_states([jid]) == {jid: "PENDING"}
    slurm_cli("scancel", jid)
    await xq.stop_feeding()
    assert await job.get_rc() == -3
    assert job.status == JobStatus.FAILED
    stderr = read(job.stderr_file)
    assert f"Slurm job {jid} ended as CANCELLED" in stderr
    assert not job.stdout_file.exists() or read(job.stdout_file) == ""


# A job over the raw time option: tests/test_slurm_resources.py, beside the
# resources' time (one wait of Slurm's minute for both).


def forgetful_squeue(tmp_path: Path) -> str:
    """A fake squeue that forgets jobs as soon as they end (as the real one does
    MinJobAge seconds later, 300 here): it drops their lines from the real answer,
    and says what the real one says when no listed job is left."""
    real = shutil.which("squeue")
    return fake_command(
        tmp_path, "squeue",
        f"""
        out=$('{real}' "$@") || exit $?
        left=$(printf '%s\\n' "$out" | grep -Ev '[|](COMPLETED|CANCELLED|FAILED|TIMEOUT)[|]')
        if [ -z "$left" ]; then
            echo "slurm_load_jobs error: Invalid job id specified" >&2
            exit 1
        fi
        printf '%s\\n' "$left"
        """,
    )


async def test_fake_squeue_forgets_jobs_then_sacct_says_how_they_ended(slurm, workdir, tmp_path):
    """A job that has left squeue and never wrote its rc: the real sacct says why."""
    xq = Xqute(
        "slurm", workdir=workdir, forks=1,
        scheduler_opts={"begin": "now+3600", "squeue": forgetful_squeue(tmp_path),
                        "query_interval": 1, "end_grace": 0},
    )
    job = await xq.feed(["true"])
    await xq.run_until_complete(keep_feeding=True)
    await wait_for(lambda: job.jid_file.exists(), what="the submission")
    jid = read(job.jid_file).strip()
    slurm_cli("scancel", jid)
    await xq.stop_feeding()
    assert await job.get_rc() == -3
    stderr = read(job.stderr_file)
    assert f"Slurm job {jid} ended as CANCELLED (by 0" in stderr


async def test_fake_sacct_without_accounting_resolves_from_the_metadir(slurm, workdir, tmp_path):
    forgetful = forgetful_squeue(tmp_path)
    no_accounting = fake_command(
        tmp_path, "sacct",
        'echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1\n',
    )
    opts = {"squeue": forgetful, "sacct": no_accounting, "query_interval": 1, "end_grace": 0}
    xq = await run(workdir, [["bash", "-c", "echo done"] for _ in range(4)], **opts)
    # the jobs wrote their rc before Slurm forgot them: the metadir answers
    assert [await job.get_rc() for job in xq.jobs] == [0, 0, 0, 0]
    assert read(xq.jobs[0].stdout_file) == "done\n"

    xq = Xqute("slurm", workdir=workdir / "pending", scheduler_opts={**opts, "begin": "now+3600"})
    job = await xq.feed(["true"])
    await xq.run_until_complete(keep_feeding=True)
    await wait_for(lambda: job.jid_file.exists(), what="the submission")
    jid = read(job.jid_file).strip()
    slurm_cli("scancel", jid)  # it never started, so it never wrote anything
    await xq.stop_feeding()
    assert await job.get_rc() == -3
    assert f"Slurm job {jid} is no longer known to Slurm" in read(job.stderr_file)


# --------------------------------------------------------------------- killing
async def test_halt_cancels_the_rest_in_one_scancel(slurm, workdir, tmp_path):
    opts, log = count_calls(tmp_path)
    xq = await run(
        workdir,
        [["bash", "-c", "sleep 2; exit 1"], ["sleep", "300"], ["sleep", "300"], ["sleep", "300"]],
        error_strategy="halt",
        query_interval=1,
        **opts,
    )
    jids = [await job.get_jid() for job in xq.jobs]
    assert await xq.jobs[0].get_rc() == 1
    assert all(job.status == JobStatus.FAILED for job in xq.jobs)
    cancels = calls(log, "scancel")
    assert len(cancels) == 1
    # the jobs went out as one array, whose live members all go: its id
    assert cancels[0][1].split() == sorted({jid.split("_")[0] for jid in jids[1:]})
    # a cancelled running job is COMPLETING for a moment, then CANCELLED
    await wait_for(lambda: set(squeue_states(jids[1:]).values()) == {"CANCELLED"},
                   timeout=30, what="Slurm to show the jobs cancelled")


def test_sigterm_to_the_manager_cancels_every_submitted_job(slurm, workdir):
    program = textwrap.dedent(
        """
        import asyncio, sys
        from xqute import Xqute
        async def main():
            # partition small runs 2 at once: the others wait in the queue
            xq = Xqute("slurm", workdir=sys.argv[1], forks=6, scheduler_opts={"p": "small"})
            for _ in range(6):
                await xq.feed(["sleep", "300"])
            await xq.run_until_complete()
            print("done")
        asyncio.run(main())
        """
    )
    manager = subprocess.Popen(
        [sys.executable, "-c", program, str(workdir)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    jid_files = [workdir / str(i) / "job.jid" for i in range(6)]
    start = time.monotonic()
    while not all(f.exists() for f in jid_files):
        assert manager.poll() is None, manager.communicate()
        assert time.monotonic() - start < 60, "jobs were not all submitted"
        time.sleep(0.2)
    jids = [read(f).strip() for f in jid_files]
    # small partition, 2 CPUs: some run, the others wait in the queue; both kinds must go
    assert set(squeue_states(jids).values()) <= {"RUNNING", "PENDING"}
    manager.send_signal(signal.SIGTERM)
    out, err = manager.communicate(timeout=60)
    assert manager.returncode == 0, err
    assert "done" in out
    # none is left running or waiting; a cancelled running job is COMPLETING for a
    # moment before it shows CANCELLED
    states = squeue_states(jids)
    assert set(states.values()) <= {"CANCELLED", "COMPLETING"}, states
    start = time.monotonic()
    while set(squeue_states(jids).values()) != {"CANCELLED"}:
        assert time.monotonic() - start < 30, squeue_states(jids)
        time.sleep(0.5)


def test_a_rerun_follows_slurm_jobs_of_a_killed_manager(slurm, workdir):
    """SIGKILL to the manager leaves its Slurm jobs queued and running; a rerun on
    the same workdir follows them instead of submitting them again. The jobs ask
    for partition small (2 CPUs), so some of them wait in the queue."""
    program = textwrap.dedent(
        """
        import asyncio, sys
        from xqute import Xqute
        async def main():
            xq = Xqute("slurm", workdir=sys.argv[1], forks=4, scheduler_opts={"p": "small"})
            for i in range(4):
                await xq.feed(["bash", "-c", f"sleep 4; echo done {i}"])
            await xq.run_until_complete()
            print("rcs", [await j.get_rc() for j in xq.jobs])
        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-c", program, str(workdir)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    jid_files = [workdir / str(i) / "job.jid" for i in range(4)]
    start = time.monotonic()
    while not all(f.exists() for f in jid_files):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() - start < 60, "jobs were not all submitted"
        time.sleep(0.1)
    first.kill()
    first.wait()
    jids = [read(f).strip() for f in jid_files]
    assert set(squeue_states(jids).values()) <= {"RUNNING", "PENDING"}
    second = subprocess.run([sys.executable, "-c", program, str(workdir)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "rcs [0, 0, 0, 0]" in second.stdout
    assert [read(f).strip() for f in jid_files] == jids  # the same Slurm jobs
    for i in range(4):
        assert read(workdir / str(i) / "job.stdout") == f"done {i}\n"
    assert set(squeue_states(jids).values()) == {"COMPLETED"}


# ------------------------------------------------------------------- retries
async def test_error_strategy_retry_resubmits_to_slurm(slurm, workdir):
    cmd = ["bash", "-c", 'if [ -e "$XQUTE_JOB_METADIR/tried" ]; then echo second; '
           'else touch "$XQUTE_JOB_METADIR/tried"; exit 4; fi']
    xq = await run(workdir, [cmd], error_strategy="retry", num_retries=2)
    job = xq.jobs[0]
    assert await job.get_rc() == 0
    assert job.trial_count == 1
    assert read(job.stdout_file) == "second\n"
    first = job.metadir / "job.retry" / "0"
    assert read(first / "job.rc").strip() == "4"
    assert read(first / "job.jid").strip() != await job.get_jid()


async def test_submit_limit_refusals_are_retried(slurm, workdir, tmp_path):
    """A real per-user submit limit (MaxSubmitJobs=2): sbatch refuses the third
    job until one ends; xqute retries instead of failing it."""
    opts, log = count_calls(tmp_path)
    slurm_cli("sacctmgr", "-i", "modify", "user", "root", "set", "MaxSubmitJobs=2")
    try:
        xq = await run(workdir, [["sleep", "2"]] * 4, submit_retries=8, **opts)
    finally:
        slurm_cli("sacctmgr", "-i", "modify", "user", "root", "set", "MaxSubmitJobs=-1")
    assert [await job.get_rc() for job in xq.jobs] == [0, 0, 0, 0]
    assert len(calls(log, "sbatch")) > 4  # some were refused, then retried


async def test_submit_rate_caps_sbatch_calls(slurm, workdir, tmp_path):
    opts, log = count_calls(tmp_path)
    # one job per sbatch: a burst would be one array, one call
    xq = await run(workdir, [["true"]] * 5, submit_rate=4, array=False, **opts)
    assert [await job.get_rc() for job in xq.jobs] == [0] * 5
    stamps = [stamp for stamp, _ in calls(log, "sbatch")]
    assert len(stamps) == 5
    # 4 a second at most: a quarter of a second between two calls at least
    assert all(b - a >= 0.2 for a, b in zip(stamps, stamps[1:])), stamps


# ---------------------------------------------------- being a good citizen
async def test_50_jobs_one_squeue_call_per_round(slurm, workdir, tmp_path):
    opts, log = count_calls(tmp_path)
    # usage records off: with them, rounds may be answered by one sacct in
    # place of squeue (tests/test_slurm_usage.py counts those)
    xq = Xqute("slurm", workdir=workdir, forks=50, scheduler_opts={**opts, "usage": False})
    for i in range(50):
        await xq.feed(["bash", "-c", f"echo {i}"])
    await xq.run_until_complete()
    scheduler = xq.scheduler
    assert [await job.get_rc() for job in xq.jobs] == [0] * 50
    assert [read(job.stdout_file) for job in xq.jobs] == [f"{i}\n" for i in range(50)]
    squeues = calls(log, "squeue")
    # one call per round that reached Slurm, for all open jobs at once
    assert len(squeues) == scheduler.query_rounds
    assert 1 <= len(squeues) < 50
    # the first round asks about every job at once: by their ids, or by the
    # id of the array they went out in
    asked = set(re.search(r"--jobs=(\S+)", squeues[0][1]).group(1).split(","))
    assert {str(await job.get_jid()).split("_")[0] for job in xq.jobs} <= asked
    assert calls(log, "sacct") == []
    # never more often than query_interval (rounds forced by new jobs aside, none here)
    gaps = [b[0] - a[0] for a, b in zip(squeues, squeues[1:])]
    assert all(gap >= scheduler.query_interval * 0.9 for gap in gaps), gaps


# ------------------------------------------------- bad input and fake commands
async def test_missing_binary_is_a_clear_error(workdir):
    xq = Xqute("slurm", workdir=workdir, scheduler_opts={"sbatch": "/nonexistent/sbatch"})
    with pytest.raises(FileNotFoundError, match="sbatch not found: ./nonexistent/sbatch."):
        await xq.feed(["true"])


def test_bad_directive_names_and_values_are_refused(workdir):
    with pytest.raises(ValueError, match="Invalid Slurm option name"):
        SlurmScheduler(workdir, **{"bad key": 1})
    with pytest.raises(ValueError, match="line break"):
        SlurmScheduler(workdir, comment="two\nlines")


def test_directive_rendering():
    assert directive_lines(
        {"p": "short", "cpus_per_task": 2, "exclusive": True, "requeue": False,
         "gres": ["gpu:1", "tmp:10G"], "x": None}
    ) == [
        "#SBATCH -p short",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --exclusive",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --gres=tmp:10G",
    ]
    assert format_directive_value("a b") == '"a b"'
    assert format_directive_value('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'


async def test_fake_sbatch_garbage_and_refusals(workdir, tmp_path):
    garbage = fake_command(tmp_path, "sbatch", "echo 'Welcome to the cluster!'\n")
    idle = fake_command(tmp_path, "idle", "exit 0\n")  # squeue/scancel: never reached
    xq = await run(workdir, [["true"]], sbatch=garbage, squeue=idle, scancel=idle)
    assert await xq.jobs[0].get_rc() == -2
    assert "printed no job id" in read(xq.jobs[0].stderr_file)

    refused = fake_command(
        tmp_path, "sbatch-refused",
        'echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2\n'
        "exit 1\n",
    )
    xq = await run(workdir / "refused", [["true"]], sbatch=refused, squeue=idle, scancel=idle)
    assert await xq.jobs[0].get_rc() == -2
    assert "Invalid partition name specified" in read(xq.jobs[0].stderr_file)


async def test_fake_sbatch_that_hangs_is_retried_then_failed(workdir, tmp_path):
    counter = tmp_path / "count"
    hangs = fake_command(tmp_path, "sbatch", f"echo x >> '{counter}'\nexec sleep 30\n")
    # squeue (for the "did it go through after all?" check) finds nothing
    empty = fake_command(tmp_path, "squeue", "exit 0\n")
    xq = await run(
        workdir, [["true"]], sbatch=hangs, squeue=empty, scancel=empty, command_timeout=0.5,
        submit_retries=2,
    )
    assert await xq.jobs[0].get_rc() == -2
    assert "timed out" in read(xq.jobs[0].stderr_file)
    assert read(counter).count("x") == 2


async def test_fake_squeue_with_an_unknown_state_keeps_waiting(workdir, tmp_path, caplog):
    weird = fake_command(tmp_path, "squeue", 'echo "4242|LEVITATING|None"\n')
    sbatch = fake_command(tmp_path, "sbatch", "echo 4242\n")
    scheduler = SlurmScheduler(workdir, sbatch=sbatch, squeue=weird)
    await scheduler.post_init()
    job = await scheduler.create_job(0, ["true"])
    job._jid = await scheduler.submit_job(job)
    answers = await scheduler.query_jobs([job])
    assert answers == {job: JobQuery(JobQuery.PENDING, "LEVITATING")}
    assert "LEVITATING" in scheduler._warned_states


async def test_fake_squeue_failure_is_not_taken_for_ended_jobs(workdir, tmp_path):
    broken = fake_command(
        tmp_path, "squeue",
        'echo "squeue: error: Unable to contact slurm controller (connect failure)" >&2; exit 1\n',
    )
    scheduler = SlurmScheduler(workdir, squeue=broken)
    job = await scheduler.create_job(0, ["true"])
    job._jid = "777"
    assert await scheduler.query_jobs([job]) == {}  # unknown: asked again later
    assert scheduler.status_calls == 1


# ------------------------------------- a rerun behind finished jobs (issue 13)
RERUN_PROGRAM = """
import asyncio, json, sys
from xqute import Xqute
async def main():
    workdir, log, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    xq = Xqute("slurm", workdir=workdir, forks=4, scheduler_opts=opts)
    script = (
        f'echo "$XQUTE_JOB_INDEX start $EPOCHREALTIME" >> "{log}"; sleep 4; '
        f'echo "$XQUTE_JOB_INDEX end $EPOCHREALTIME" >> "{log}"'
    )
    for i in range(12):
        # xqute expands $NAME in a list command's arguments: bash's own are \\$
        await xq.feed(["bash", "-c", script.replace("$", "\\\\$")])
    await xq.run_until_complete()
    print("rcs", [await j.get_rc() for j in xq.jobs])
asyncio.run(main())
"""

SLURM_ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}


def submission_logger(tmp_path: Path) -> tuple[str, Path]:
    """A wrapper around the real sbatch that logs ``<time> <job index> <jid>`` per
    call (the time taken before the call; the index is the name of the folder of
    the submitted wrapper script, the job's metadir); returns it and its log."""
    real = shutil.which("sbatch")
    assert real, "sbatch not installed"
    log = tmp_path / "submissions.log"
    log.touch()
    shim = tmp_path / "submit-shim" / "sbatch"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(
        "#!/bin/bash\n"
        "when=$(date +%s.%N)\n"
        "for script; do :; done\n"
        f"out=$('{real}' \"$@\"); rc=$?\n"
        f'echo "$when $(basename "$(dirname "$script")") $out" >> \'{log}\'\n'
        'printf "%s\\n" "$out"\n'
        "exit $rc\n"
    )
    shim.chmod(0o755)
    return str(shim), log


def submissions(log: Path) -> list[tuple[float, str, str]]:
    """(time, job index, Slurm job id) per sbatch call, in the order made
    (the id is empty for a refused call)."""
    found = []
    for line in log.read_text().splitlines():
        when, index, *jid = line.split()
        found.append((float(when), index, jid[0].split(";")[0] if jid else ""))
    return found


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most of ``intervals`` open at one time (an end before a start at a tie)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def wait_until_out_of_slurm(jids: list[str], timeout: float = 300) -> list[str]:
    """Wait for the Slurm jobs ``jids`` to end by themselves; those still queued or
    running after ``timeout`` are cancelled and returned."""
    jids = [jid for jid in jids if jid]
    start = time.monotonic()
    while jids and time.monotonic() - start < timeout:
        states = squeue_states(jids)
        if not SLURM_ACTIVE_STATES & set(states.values()):
            return []
        time.sleep(1)
    left = [jid for jid, state in squeue_states(jids).items() if state in SLURM_ACTIVE_STATES] if jids else []
    if left:
        subprocess.run(["scancel", *left], capture_output=True, timeout=60)
    return left


def test_a_rerun_adopts_slurm_jobs_left_running_behind_finished_ones_at_once(slurm, workdir, tmp_path):
    """The manager (12 jobs, forks 4) is SIGKILLed while Slurm has jobs 4-7
    (0-3 done, 8-11 not submitted). A rerun at once, with the same 12 commands,
    follows 4-7 from its start: they are never submitted again and count against
    forks, though 0-3 (finished, so fed to run again) come first in its queue.

    The node has 32 CPUs, so only forks keeps at most 4 jobs running: it is
    checked on the jobs running and on those handed to Slurm (from sbatch to
    their end)."""
    log = tmp_path / "log"
    log.touch()
    sbatch, submit_log = submission_logger(tmp_path)
    # asked every second or two, so that the kill finds 4-7 in Slurm and 8 not yet
    # one job per sbatch, so that the kill finds 8-11 not yet handed to Slurm
    # (tests/test_slurm_arrays.py has the rerun of a killed manager's array)
    opts = {"sbatch": sbatch, "query_interval": 1, "query_interval_max": 2, "array": False}
    cmd = [sys.executable, "-c", RERUN_PROGRAM, str(workdir), str(log), json.dumps(opts)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XQUTE_LOG_LEVEL": "INFO"}
    jid_files = [workdir / str(i) / "job.jid" for i in range(12)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        start = time.monotonic()
        while not all(f.exists() and read(f).strip() for f in jid_files[4:8]):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() - start < 180, "jobs 4-7 were not all submitted"
            time.sleep(0.05)
        first.kill()
        _, first_err = first.communicate()
        assert not jid_files[8].exists(), "the kill came too late: job 8 was submitted"
        ended = {line.split()[0] for line in read(log).splitlines() if " end " in line}
        assert ended == {"0", "1", "2", "3"}, read(log)
        left = [read(f).strip() for f in jid_files[4:8]]
        states = squeue_states(left)
        assert set(states.values()) <= {"RUNNING", "PENDING"}, states

        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr
        assert "rcs [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" in second.stdout, second.stderr
        assert [read(f).strip() for f in jid_files[4:8]] == left  # the same Slurm jobs
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        stuck = wait_until_out_of_slurm([jid for _, _, jid in submissions(submit_log)])
    assert not stuck, f"Slurm jobs still queued or running (cancelled): {stuck}"
    managers = f"first:\n{first_err.decode()}\nsecond:\n{second.stderr}"

    lines = read(log).splitlines()
    starts = [line.split()[0] for line in lines if " start " in line]
    # 0-3 ended before the kill and were fed again: twice; every other job once
    assert [starts.count(str(i)) for i in range(4, 12)] == [1] * 8, (lines, managers)
    assert [starts.count(str(i)) for i in range(4)] == [2] * 4, (lines, managers)
    subs = submissions(submit_log)
    submitted = [index for _, index, jid in subs if jid]  # refusals aside
    assert [submitted.count(str(i)) for i in range(12)] == [2] * 4 + [1] * 8, (subs, managers)

    def times(index, what):
        return sorted(float(line.split()[2]) for line in lines
                      if line.split()[:2] == [str(index), what])

    running, in_slurm = [], []
    for i in range(12):
        ends = times(i, "end")
        running += zip(times(i, "start"), ends)
        in_slurm += zip(sorted(when for when, index, jid in subs if jid and index == str(i)), ends)
    assert len(running) == len(in_slurm) == 16
    assert peak_overlap(running) <= 4, (lines, managers)
    assert peak_overlap(in_slurm) <= 4, (subs, lines, managers)


ONE_JOB_PROGRAM = """
import asyncio, json, sys
from xqute import Xqute
async def main():
    xq = Xqute("slurm", workdir=sys.argv[1], forks=1, scheduler_opts=json.loads(sys.argv[2]))
    log = sys.argv[3]
    await xq.feed(["bash", "-c", f"echo start >> {log}; sleep 8; echo end >> {log}"])
    await xq.run_until_complete()
    print("rc", await xq.jobs[0].get_rc())
asyncio.run(main())
"""


def _run_one_job(workdir, opts, log, wait=True):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    args = [sys.executable, "-c", ONE_JOB_PROGRAM, str(workdir), json.dumps(opts), str(log)]
    if not wait:
        return subprocess.Popen(args, env=env)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def _wait_path(path: Path, limit: float = 120) -> None:
    start = time.monotonic()
    while not path.exists():
        assert time.monotonic() - start < limit, f"{path} never appeared"
        time.sleep(0.05)


def test_a_rerun_whose_first_squeue_fails_follows_the_job_left_running(slurm, tmp_path):
    """An squeue that fails during adoption means 'unknown', not 'gone': the
    rerun follows the job rather than starting a second copy of it."""
    workdir, log = tmp_path / "wd", tmp_path / "log"
    first = _run_one_job(workdir, {}, log, wait=False)
    _wait_path(workdir / "0" / "job.jid")
    _wait_path(log)
    first.kill()
    first.wait()
    jid = read(workdir / "0" / "job.jid").strip()
    flaky = fake_command(tmp_path, "fake-squeue-fails-once", f"""
        if [ ! -e '{tmp_path}/failed-once' ]; then
            touch '{tmp_path}/failed-once'
            echo "squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation" >&2
            exit 1
        fi
        exec '{shutil.which("squeue")}' "$@"
    """)
    second = _run_one_job(workdir, {"squeue": flaky}, log)
    assert "rc 0" in second.stdout, second.stderr
    assert (tmp_path / "failed-once").exists()
    assert read(log).split() == ["start", "end"]  # one copy only
    assert read(workdir / "0" / "job.jid").strip() == jid


def test_a_rerun_finds_by_name_a_job_whose_manager_died_before_its_jid_file(slurm, tmp_path):
    """Killed after sbatch reached Slurm but before its reply (no jid file):
    the rerun finds the job by its name and follows it."""
    workdir, log = tmp_path / "wd", tmp_path / "log"
    slow = fake_command(tmp_path, "fake-slow-reply-sbatch", f"""
        out=$('{shutil.which("sbatch")}' "$@"); rc=$?
        touch '{tmp_path}/submitted'
        sleep 5
        echo "$out"; exit $rc
    """)
    first = _run_one_job(workdir, {"sbatch": slow}, log, wait=False)
    _wait_path(tmp_path / "submitted")
    first.kill()
    first.wait()
    assert not (workdir / "0" / "job.jid").exists()
    second = _run_one_job(workdir, {}, log)
    assert "rc 0" in second.stdout, second.stderr
    assert read(log).split() == ["start", "end"]  # one copy only


async def test_a_job_cancelled_while_queued_does_not_storm_slurm(slurm, workdir, tmp_path):
    """One job cancelled while it waits (held) and five that run: Slurm is asked
    at most once per query interval, at most 2*W/5 + 5 status calls (squeue and
    sacct) for a run of W seconds."""
    opts, log = count_calls(tmp_path)
    opts.pop("scontrol")
    xq = Xqute("slurm", workdir=workdir, forks=8, scheduler_opts={**opts, "hold": True})
    jobs = [await xq.feed(["sleep", "2"]) for _ in range(6)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    run = asyncio.ensure_future(xq.run_until_complete())
    deadline = started + 120
    while not all(job.jid for job in jobs):
        assert loop.time() < deadline, "the jobs were never submitted"
        await asyncio.sleep(0.2)
    slurm_cli("scancel", jobs[0].jid)
    slurm_cli("scontrol", "release", ",".join(job.jid for job in jobs[1:]))
    await asyncio.wait_for(run, 180)
    wall = loop.time() - started
    assert [await job.get_rc() for job in jobs[1:]] == [0] * 5
    assert jobs[0].status == JobStatus.FAILED
    status_calls = calls(log, "squeue") + calls(log, "sacct")
    print(f"Slurm: {len(status_calls)} status calls in {wall:.1f} s (bound {2 * wall / 5 + 5:.0f})")
    assert len(status_calls) <= 2 * wall / 5 + 5, (wall, status_calls)
