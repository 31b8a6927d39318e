"""What xqute 2.x clients (pipen and its plugins) rely on in the core: the
contract's section "What real 2.x clients also rely on"."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from xqute import Job, JobStatus, Scheduler, Xqute, plugin
from xqute.schedulers.local_scheduler import LocalScheduler
from xqute.scheduler import safe_jobname_prefix


def read(path) -> str:
    return Path(path).read_text()


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path / "work dir")


def shutdown_recorder():
    calls = []

    class Recorder:
        name = "shutdown_recorder"

        @plugin.impl
        def on_shutdown(xqute, sig):
            calls.append(("on_shutdown", sig))

        @plugin.impl
        async def on_job_succeeded(scheduler, job):
            calls.append(("on_job_succeeded", job.index))

        @plugin.impl
        async def on_job_failed(scheduler, job):
            calls.append(("on_job_failed", job.index))

    return calls, Recorder


async def test_on_shutdown_fires_once_with_none_at_a_normal_end(workdir):
    calls, recorder = shutdown_recorder()
    xq = Xqute(workdir=workdir, plugins=[recorder])
    await xq.feed(["true"])
    await xq.feed(["false"])
    await xq.run_until_complete()
    shutdowns = [c for c in calls if c[0] == "on_shutdown"]
    assert shutdowns == [("on_shutdown", None)]
    assert calls[-1] == ("on_shutdown", None)  # after the last job hook


async def test_on_shutdown_fires_with_none_when_feeding_stops(workdir):
    calls, recorder = shutdown_recorder()
    xq = Xqute(workdir=workdir, plugins=[recorder])
    await xq.run_until_complete(keep_feeding=True)
    await xq.feed(["true"])
    await xq.stop_feeding()
    assert [c for c in calls if c[0] == "on_shutdown"] == [("on_shutdown", None)]


async def test_a_halt_fires_on_shutdown_with_sigterm_once(workdir):
    calls, recorder = shutdown_recorder()
    xq = Xqute(workdir=workdir, plugins=[recorder], error_strategy="halt", forks=2)
    await xq.feed(["false"])
    await xq.feed(["sleep", "30"])
    await xq.run_until_complete()
    assert [c for c in calls if c[0] == "on_shutdown"] == [("on_shutdown", signal.SIGTERM)]
    assert xq.jobs[1].status == JobStatus.FAILED


async def test_post_init_runs_once_and_not_after_a_client_ran_it(workdir):
    runs = []

    class Counting(LocalScheduler):
        async def post_init(self):
            runs.append(1)

    xq = Xqute(Counting, workdir=workdir)
    # concurrent creation (pipen prepares jobs in parallel batches)
    await asyncio.gather(*(xq.scheduler.create_job(i, "") for i in range(5)))
    for job in await asyncio.gather(*(xq.scheduler.create_job(i, "true") for i in range(5, 7))):
        await xq.feed(job)
    await xq.run_until_complete()
    assert runs == [1]

    runs.clear()
    xq2 = Xqute(Counting, workdir=workdir)
    await xq2.scheduler.post_init()  # what pipen's init_proc does
    xq2.scheduler._post_init_called = True
    await xq2.feed(["true"])
    await xq2.run_until_complete()
    assert runs == [1]


async def test_jobcmd_wrapper_init_starts_with_cd_to_the_quoted_cwd(workdir, tmp_path):
    cwd = tmp_path / "a dir with 'quotes'"
    cwd.mkdir()
    xq = Xqute(workdir=workdir, scheduler_opts={"cwd": str(cwd)})
    assert xq.scheduler.jobcmd_wrapper_init.startswith(f"cd \"{cwd}\"") or \
        xq.scheduler.jobcmd_wrapper_init.startswith("cd '")
    await xq.feed(["pwd"])
    await xq.run_until_complete()
    assert read(xq.jobs[0].stdout_file) == f"{cwd}\n"
    assert isinstance(Xqute(workdir=workdir).scheduler.jobcmd_wrapper_init, str)


async def test_local_submit_job_returns_the_pid_as_an_int(workdir):
    sched = LocalScheduler(workdir)
    job = await sched.create_job(0, ["true"])
    pid = await sched.submit_job(job)
    assert isinstance(pid, int) and pid > 0
    await asyncio.sleep(0)  # let the pidfd reader run when the wrapper ends
    await sched.close()


async def test_local_job_fails_before_running_when_its_pid_is_gone(workdir):
    sched = LocalScheduler(workdir)
    job = await sched.create_job(0, ["true"])
    await job.set_jid(2**22 + 12345)  # above pid_max's default: no such process
    assert await sched.job_fails_before_running(job)
    await job.set_status(JobStatus.RUNNING)
    assert not await sched.job_fails_before_running(job)


class NeverStarts(Scheduler):
    """A 2.x-style backend (the three methods plus job_fails_before_running)
    whose jobs stay 'queued' in the scheduler but never start."""

    name = "neverstarts"

    async def submit_job(self, job):
        return 1000 + job.index

    async def kill_job(self, job):
        pass

    async def job_is_running(self, job):
        return True

    async def job_fails_before_running(self, job):
        return True


async def test_a_2x_backends_job_fails_before_running_is_asked(workdir):
    xq = Xqute(NeverStarts, workdir=workdir, scheduler_opts={"poll_interval": 0.05})
    await xq.feed(["true"])
    # without the question the run never ends: guard, not a timing assert
    await asyncio.wait_for(xq.run_until_complete(), 60)
    job = xq.jobs[0]
    assert job.status == JobStatus.FAILED
    assert "failed before" in read(job.stderr_file)


@pytest.mark.parametrize(
    "prefix", ["Étape_α", "x" * 200, "Proc.v2-final", "数据处理"]
)
async def test_any_pipen_process_name_is_a_jobname_prefix(workdir, prefix):
    xq = Xqute(workdir=workdir, jobname_prefix=prefix)
    assert xq.scheduler.jobname_prefix == prefix
    job = await xq.feed(["true"])
    name = xq.scheduler.job_name(job)
    assert name.isascii() and len(name) <= 60
    assert all(ch.isalnum() or ch in "_.-" for ch in name)
    await xq.run_until_complete()
    assert job.status == JobStatus.FINISHED


def test_reduced_prefixes_stay_distinct():
    assert safe_jobname_prefix("proc") == "proc"
    assert safe_jobname_prefix("a" * 100) != safe_jobname_prefix("a" * 101)
    assert safe_jobname_prefix("é") != safe_jobname_prefix("è")


async def test_a_job_object_created_empty_and_fed_later(workdir):
    xq = Xqute(workdir=workdir)
    job = Job(index=0, cmd=(), workdir=xq.scheduler.workdir)
    job.cmd = ("echo", "later")
    await xq.feed(job, envs={"EXTRA": "1"})
    await xq.run_until_complete()
    assert read(job.stdout_file) == "later\n"


async def test_no_polling_tick_without_a_plugin_that_implements_it(workdir):
    """With no on_job_polling implementation enabled, a running local job
    wakes the manager only when it ends; with one, the hook fires each second."""
    rounds = []

    class Counting(LocalScheduler):
        async def refresh_jobs(self, jobs):
            rounds.append(len(jobs))
            return await super().refresh_jobs(jobs)

    xq = Xqute(Counting, workdir=workdir)
    await xq.feed(["sleep", "2.5"])
    await xq.run_until_complete()
    # after the submission and at the end only: no 1 s ticks between (5 with them)
    assert len(rounds) <= 3, rounds

    polled = []

    class Poller:
        name = "poller"

        @plugin.impl
        async def on_job_polling(scheduler, job, counter):
            polled.append(counter)

    xq = Xqute(workdir=workdir, plugins=[Poller])
    await xq.feed(["sleep", "2.5"])
    await xq.run_until_complete()
    assert polled and polled == sorted(polled)


from hypothesis import given, settings, strategies as st  # noqa: E402

from xqute.scheduler import shell_word  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40))
def test_an_escaped_argument_reaches_the_command_exactly(text):
    """Whatever an argument holds, with its $ escaped it arrives byte for byte:
    nothing in it is executed, globbed or split."""
    import subprocess

    from xqute.utils import shell_quote

    # as the wrapper does it: cmd=<quoted command line>, then eval "$cmd"
    line = f"printf %s {shell_word(text.replace('$', chr(92) + '$'))}"
    out = subprocess.run(
        ["bash", "-c", f'set -u; cmd={shell_quote(line)}; eval "$cmd"'], capture_output=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode("utf-8", "surrogateescape") == text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30))
def test_an_expanded_name_stays_one_word_and_is_never_run(value):
    import os
    import subprocess

    from xqute.utils import shell_quote

    line = "printf '<%s>' " + " ".join(shell_word(a) for a in ["pre$V", "${V}post", "$V"])
    out = subprocess.run(
        ["bash", "-c", f'set -u; cmd={shell_quote(line)}; eval "$cmd"'],
        capture_output=True, env={**os.environ, "V": value},
    )
    assert out.returncode == 0, out.stderr
    got = out.stdout.decode("utf-8", "surrogateescape")
    assert got == f"<pre{value}><{value}post><{value}>"
