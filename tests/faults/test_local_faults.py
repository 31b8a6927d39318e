"""Faults injected into runs of the local scheduler: killed wrappers, a full
disk, raising plugins, many retried failures, hostile input."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from conftest import make_active_counter, processes_with
from xqute import JobStatus, Xqute, plugin
from xqute.job import Job
from xqute.scheduler import check_directive, check_jobname_prefix
from xqute.schedulers.local_scheduler import LocalScheduler


async def test_a_wrapper_killed_outright_fails_its_job_with_rc_minus_3(workdir):
    xq = Xqute(workdir=workdir, forks=2)
    await xq.feed(["sleep", "30"])
    await xq.feed(["echo", "unharmed"])

    async def kill_first_wrapper():
        job = xq.jobs[0]
        while job._jid is None or job.status != JobStatus.RUNNING:
            await asyncio.sleep(0.02)
        os.kill(int(job._jid), signal.SIGKILL)  # its exit trap cannot run

    killer = asyncio.ensure_future(kill_first_wrapper())
    await asyncio.wait_for(xq.run_until_complete(), 20)
    await killer
    job, other = xq.jobs
    assert await job.get_rc() == -3
    assert job.status == JobStatus.FAILED
    assert int(job.status_file.read_text()) == JobStatus.FAILED
    assert "SIGKILL" in job.stderr_file.read_text()
    assert await other.get_rc() == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs to fill up (needs root and mount)."""
    mnt = tmp_path / "small disk"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"cannot mount a tmpfs in CI: {proc.stderr.strip()}")
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


async def test_a_full_disk_still_ends_every_job_with_a_recorded_or_reported_state(small_disk):
    workdir = small_disk / "wd"
    xq = Xqute(workdir=workdir, forks=4)
    # each job writes 1 MB: the disk fills while they run
    for i in range(8):
        await xq.feed(["bash", "-c", "head -c 1000000 /dev/zero; echo written >&2"])
    await asyncio.wait_for(xq.run_until_complete(), 60)
    recorded = 0
    for job in xq.jobs:
        assert JobStatus.is_final(job.status), job
        rc_text = job.rc_file.read_text() if job.rc_file.exists() else None
        if rc_text is not None and rc_text.strip():
            recorded += 1
            assert int(rc_text) == await job.get_rc()
    # the jobs that started once the disk was full still recorded their end,
    # thanks to the space reserved at start; none is left RUNNING
    assert recorded >= 1
    assert all(job.status != JobStatus.RUNNING for job in xq.jobs)


async def test_on_a_full_disk_the_manager_records_an_end_over_the_placeholders_in_place(small_disk):
    """The manager's own end of a trial (a job that failed before its wrapper
    recorded anything) is written with a temporary file and a rename, which a
    full disk refuses: then the rc goes over the placeholder written at
    submission, and the status over the one before, in place."""
    from xqute.schedulers.local_scheduler import LocalScheduler

    scheduler = LocalScheduler(workdir=small_disk / "wd", forks=1)
    job = await scheduler.create_job(0, ["true"])
    await job.reserve_rc()
    await job.set_status(JobStatus.SUBMITTED)
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    with pytest.raises(OSError):  # the disk is full indeed
        (small_disk / "wd" / "new").write_text("x")
    await job.set_rc(-2)
    await job.set_status(JobStatus.FAILED)
    assert int(job.rc_file.read_text()) == -2 and await job.read_rc_file() == -2
    assert int(job.status_file.read_text()) == JobStatus.FAILED


async def test_a_raising_plugin_stops_the_run_with_its_name_and_nothing_left(workdir):
    marker = f"xq-badplugin-{os.getpid()}"

    class Broken:
        name = "broken_plugin_xq"

        @plugin.impl
        async def on_job_succeeded(scheduler, job):
            raise RuntimeError("plugin bug")

    xq = Xqute(workdir=workdir, forks=2, plugins=[Broken])
    await xq.feed("true")
    await xq.feed(["bash", "-c", f"sleep 30 # {marker}"])
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(xq.run_until_complete(), 30)
    assert "broken_plugin_xq" in str(info.value) and "on_job_succeeded" in str(info.value)
    assert processes_with(marker) == []
    first, second = xq.jobs
    assert first.status == JobStatus.FINISHED  # its state stays what the job did
    assert second.status == JobStatus.FAILED  # killed when the run stopped
    assert Broken.name not in plugin.get_enabled_plugin_names()


def _fails(index: int, trial: int) -> bool:
    """Deterministic '10% random' failures per (job, trial)."""
    return (index * 2654435761 + trial * 40503 + 17) % 10 == 0


async def test_2000_jobs_with_10_percent_failures_under_retry(workdir):
    njobs, forks, retries = 2000, 8, 2
    counter, plugin_cls = make_active_counter("count_2000")

    # the trial number is the number of backups in job.retry/; the formula is _fails()
    script = (
        't=0; for d in "$XQUTE_JOB_METADIR"/job.retry/*/; do [ -d "$d" ] && t=$((t+1)); done; '
        'echo "$EPOCHREALTIME"; '
        '[ $(( (XQUTE_JOB_INDEX * 2654435761 + t * 40503 + 17) % 10 )) -ne 0 ]; rc=$?; '
        'echo "$EPOCHREALTIME"; exit $rc'
    )
    xq = Xqute(workdir=workdir, forks=forks, error_strategy="retry", num_retries=retries, plugins=[plugin_cls])
    for _ in range(njobs):
        # \$: the script's own variables, not expanded by xqute
        await xq.feed(["bash", "-c", script.replace("$", "\\$")])
    await asyncio.wait_for(xq.run_until_complete(), 900)

    expected_trials = {}
    for i in range(njobs):
        trial = 0
        while _fails(i, trial) and trial < retries:
            trial += 1
        expected_trials[i] = trial
    expected_failed = sorted(i for i in range(njobs) if _fails(i, expected_trials[i]))
    failed = sorted(job.index for job in xq.jobs if job.status == JobStatus.FAILED)
    assert failed == expected_failed
    assert sum(job.status == JobStatus.FINISHED for job in xq.jobs) == njobs - len(expected_failed)
    intervals = []
    for job in xq.jobs:
        assert job.trial_count == expected_trials[job.index]
        backups = job.metadir / "job.retry"
        kept = sorted(p.name for p in backups.iterdir()) if backups.exists() else []
        assert kept == [str(t) for t in range(job.trial_count)]
        for t in kept:
            assert int((backups / t / "job.rc").read_text()) == 1
        start, end = map(float, job.stdout_file.read_text().split())
        intervals.append((start, end))
    assert counter.peak <= forks and counter.active == 0
    # and as the jobs themselves saw it: never more than `forks` at once
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most <= forks


# ------------------------------------------------------------------ hostile input
printable_or_not = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(printable_or_not, min_size=1, max_size=4), value=printable_or_not)
def test_any_argument_or_env_value_reaches_the_job_unchanged(tmp_path_factory, args, value):
    """Whatever the text — quotes, ;, $(), backticks, newlines — it arrives as data.

    Arguments with ``$NAME``/``${NAME}`` or ``\\$`` are left out: those expand
    by contract (tests/test_core.py checks them), so ``$A`` or ``$_`` would
    not arrive as typed."""
    assume(not any(re.search(r"\$\{?[A-Za-z_]|\\\$", arg) for arg in args))
    workdir = tmp_path_factory.mktemp("quoting")
    sched = LocalScheduler(workdir)
    code = "import json,os,sys; print(json.dumps([sys.argv[1:], os.environ['V']]))"
    job = Job(0, [sys.executable, "-c", code, *args], sched.workdir, envs={"V": value})
    os.makedirs(job.metadir)
    script = job.metadir / sched.wrapped_script_name
    script.write_text(sched.wrap_job_script(job))
    proc = subprocess.run(["bash", str(script)], capture_output=True, timeout=30)
    assert proc.returncode == 0, job.stderr_file.read_text()
    got_args, got_value = json.loads(job.stdout_file.read_text())
    assert got_args == args
    assert got_value == value
    assert not list(Path(workdir).glob("injected*"))


@pytest.mark.parametrize(
    "name", ["1ABC", "A-B", "A B", "A;touch x", "$(x)", "", "A\nB", "A=B"]
)
def test_env_names_that_are_not_identifiers_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="environment variable name"):
        Job(0, "true", tmp_path, envs={name: "v"})


@pytest.mark.parametrize("prefix", ["a:b", "a b", "a;b", "a\nb", "$(x)", "`x`", "", "a/b"])
def test_job_name_prefixes_that_could_inject_are_refused(tmp_path, prefix):
    with pytest.raises(ValueError, match="jobname_prefix"):
        check_jobname_prefix(prefix)
    if prefix:  # an empty prefix means "the scheduler's name", as in 2.x
        with pytest.raises(ValueError, match="jobname_prefix"):
            LocalScheduler(tmp_path, jobname_prefix=prefix)


@pytest.mark.parametrize("value", ["4G\n#SBATCH --uid=0", "a\rb", "a\0b"])
def test_directive_values_that_could_start_a_new_line_are_refused(value):
    with pytest.raises(ValueError, match="Invalid scheduler option"):
        check_directive("mem", value)


async def test_meta_files_follow_the_umask_and_are_never_world_writable(workdir):
    old = os.umask(0o077)
    try:
        xq = Xqute(workdir=workdir)
        await xq.feed("echo private")
        await xq.run_until_complete()
    finally:
        os.umask(old)
    job = xq.jobs[0]
    for path in Path(job.metadir).iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path.name, oct(mode))


async def test_env_values_never_reach_the_log(workdir, caplog):
    secret = "s3cr3t-token-value-xq"
    caplog.set_level("DEBUG", logger="XQUTE")
    import logging

    logging.getLogger("XQUTE").propagate = True
    try:
        xq = Xqute(workdir=workdir, error_strategy="retry", num_retries=1)
        await xq.feed(["bash", "-c", "exit 1"], envs={"TOKEN": secret})
        await xq.run_until_complete()
    finally:
        logging.getLogger("XQUTE").propagate = False
    assert caplog.records  # something was logged at DEBUG
    assert secret not in caplog.text


async def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(workdir):
    marker = f"xq-stubborn-{os.getpid()}"
    xq = Xqute(workdir=workdir)
    await xq.feed(["bash", "-c", f"trap '' TERM; sh -c 'trap \"\" TERM; sleep 60; true {marker}'"])
    seen = []

    def check_then_cancel():
        seen.extend(processes_with(marker))
        xq.cancel()

    asyncio.get_running_loop().call_later(0.5, check_then_cancel)
    await asyncio.wait_for(xq.run_until_complete(), 30)
    assert seen
    assert processes_with(marker) == []
    assert xq.jobs[0].status == JobStatus.FAILED


def test_the_session_sweep_spares_processes_started_outside_the_session_window():
    """A session number can be reused once its leader is gone: the sweep kills
    only processes that started while our wrapper led the session."""
    from xqute.schedulers.local_scheduler import _proc_stat, _session_members

    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        start = int(_proc_stat(proc.pid)[19])
        assert _session_members({proc.pid: (start, float("inf"))}) == [proc.pid]
        assert _session_members({proc.pid: (start - 100, start - 1)}) == []  # began after the leader ended
        assert _session_members({proc.pid: (start + 1, float("inf"))}) == []  # before the leader began
    finally:
        proc.kill()
        proc.wait()
