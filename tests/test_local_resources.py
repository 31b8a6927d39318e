"""``resources`` on the local scheduler: the CPUs a job asks for count against
``cpu_budget`` as well as ``forks``; a job waits, held, until its CPUs fit.

Concurrency is measured from the jobs' own clocks: each job prints
``date +%s.%N`` when it starts and when it ends, and the most intervals that
overlap at any instant is computed from those stamps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from xqute import JobStatus, Xqute, plugin
from xqute.resources import Resources
from xqute.schedulers.container_scheduler import ContainerScheduler
from xqute.schedulers.local_scheduler import LocalScheduler

# prints its start and end as seconds since the epoch (the job's own clock)
STAMPED = 'date +%s.%N; sleep "$1"; date +%s.%N'


def stamped(seconds: float) -> list[str]:
    return ["bash", "-c", STAMPED, "stamped", str(seconds)]


def intervals(xq: Xqute) -> list[tuple[float, float]]:
    spans = []
    for job in xq.jobs:
        start, end = (float(word) for word in Path(job.stdout_file).read_text().split())
        spans.append((start, end))
    return spans


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at a tie)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


async def run(workdir, cmds, forks, **opts) -> Xqute:
    xq = Xqute(workdir=workdir, forks=forks, scheduler_opts=opts)
    for cmd in cmds:
        await xq.feed(cmd)
    await asyncio.wait_for(xq.run_until_complete(), 60)
    return xq


async def all_succeeded(xq: Xqute) -> bool:
    return [await job.get_rc() for job in xq.jobs] == [0] * len(xq.jobs)


# ------------------------------------------------------------------ the budget
async def test_cpus_count_against_the_budget(workdir):
    """cpu_budget 4, six 2-CPU jobs of 1 s, forks 6: never more than 2 at once."""
    xq = await run(
        workdir, [stamped(1)] * 6, forks=6, resources={"cpus": 2}, cpu_budget=4,
    )
    assert await all_succeeded(xq)
    spans = intervals(xq)
    assert peak_overlap(spans) == 2
    # three waves of two, by the jobs' own clocks: not six at once
    assert max(end for _, end in spans) - min(start for start, _ in spans) >= 3
    assert xq.scheduler.cpus_in_use == 0 and xq.scheduler.held_jobs == 0


async def test_forks_still_cap_within_the_budget(workdir):
    """1-CPU jobs with a budget of 8 and forks 2: forks is the tighter cap."""
    xq = await run(
        workdir, [stamped(0.5)] * 6, forks=2, resources={"cpus": 1}, cpu_budget=8,
    )
    assert await all_succeeded(xq)
    assert peak_overlap(intervals(xq)) == 2


async def test_the_default_budget_is_the_machines_cpus(workdir):
    cpus = os.cpu_count() or 1
    sched = LocalScheduler(workdir)
    assert sched.cpu_budget == cpus
    # jobs each asking for the whole machine run one at a time
    xq = await run(workdir, [stamped(0.3)] * 3, forks=3, resources={"cpus": cpus})
    assert await all_succeeded(xq)
    assert peak_overlap(intervals(xq)) == 1


async def test_jobs_asking_no_cpus_are_not_held(workdir):
    """Without cpus in resources, only forks caps (as before the budget)."""
    xq = await run(workdir, [stamped(0.5)] * 4, forks=4, cpu_budget=1)
    assert await all_succeeded(xq)
    assert peak_overlap(intervals(xq)) == 4


async def test_held_jobs_are_pending_until_their_cpus_fit(workdir, recorder):
    """A held job has a pid (its jid) at once but is not started: no
    on_job_started and status SUBMITTED until a running job frees its CPUs."""
    recorder, plugin_cls = recorder
    xq = Xqute(
        workdir=workdir, forks=2, plugins=[plugin_cls],
        scheduler_opts={"resources": {"cpus": 2}, "cpu_budget": 3},
    )
    first = await xq.feed(["bash", "-c", "sleep 1"])
    second = await xq.feed(["bash", "-c", "echo second ran"])
    await xq.run_until_complete(keep_feeding=True)
    sched = xq.scheduler
    for _ in range(100):
        if sched.held_jobs:
            break
        await asyncio.sleep(0.02)
    assert sched.held_jobs == 1 and sched.cpus_in_use == 2
    assert await second.get_jid()  # submitted: it has its process
    assert second._status == JobStatus.SUBMITTED
    assert "on_job_started" not in recorder.of(1)
    assert not Path(second.stdout_file).exists()
    await asyncio.wait_for(xq.stop_feeding(), 30)
    assert await first.get_rc() == 0 and await second.get_rc() == 0
    assert Path(second.stdout_file).read_text() == "second ran\n"
    assert recorder.of(1).count("on_job_started") == 1


async def test_a_held_job_can_be_killed(workdir):
    """Halting while a job is held kills it too, at once: it never runs."""
    xq = Xqute(
        workdir=workdir, forks=2, error_strategy="halt",
        scheduler_opts={"resources": {"cpus": 2}, "cpu_budget": 2},
    )
    await xq.feed(["bash", "-c", "sleep 0.3; exit 3"])
    held = await xq.feed(["bash", "-c", "echo must not run >&2"])
    began = time.monotonic()
    await asyncio.wait_for(xq.run_until_complete(), 30)
    assert time.monotonic() - began < 5
    assert await held.get_status(refresh=True) == JobStatus.FAILED
    assert "must not run" not in Path(held.stderr_file).read_text()
    assert xq.scheduler.held_jobs == 0


async def test_cancel_while_jobs_are_held_is_quick(workdir):
    xq = Xqute(
        workdir=workdir, forks=4, scheduler_opts={"resources": {"cpus": 1}, "cpu_budget": 1},
    )
    for _ in range(4):
        await xq.feed(["sleep", "30"])
    await xq.run_until_complete(keep_feeding=True)
    await asyncio.sleep(0.5)
    assert xq.scheduler.held_jobs == 3
    began = time.monotonic()
    xq.cancel()
    await asyncio.wait_for(xq.stop_feeding(), 20)
    assert time.monotonic() - began < 10
    assert all(job._status == JobStatus.FAILED for job in xq.jobs)


def test_a_held_job_whose_manager_is_gone_exits_without_running(workdir, tmp_path):
    """The hold's pipe ends with the manager: the held process exits (75) and
    never runs the wrapper."""

    async def main():
        sched = LocalScheduler(workdir, resources={"cpus": 1}, cpu_budget=1)
        marker = tmp_path / "ran"
        running = sched.start_process(["/bin/sleep", "5"], 1)
        held = sched.start_process(["/bin/bash", "-c", f"touch '{marker}'"], 1)
        assert sched.held_jobs == 1
        # what a manager's death does to the pipe
        _, write_end = sched._held.pop(held)
        os.close(write_end)
        _, status = await asyncio.get_running_loop().run_in_executor(None, os.waitpid, held, 0)
        os.kill(running, signal.SIGKILL)
        os.waitpid(running, 0)
        return status, marker.exists()

    status, ran = asyncio.run(main())
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 75
    assert not ran


# ------------------------------------------------------------------ refusals
def test_resources_over_the_whole_budget_are_refused_at_creation(workdir):
    with pytest.raises(ValueError, match=r"4 CPUs per job, more than the whole cpu_budget \(2\)"):
        LocalScheduler(workdir, resources={"cpus": 4}, cpu_budget=2)


@pytest.mark.parametrize("budget", [0, -1, "many", 1.5, True])
def test_a_bad_cpu_budget_is_refused(workdir, budget):
    with pytest.raises(ValueError, match="cpu_budget"):
        LocalScheduler(workdir, cpu_budget=budget)


async def test_a_job_asking_more_than_the_budget_fails_at_submission(workdir):
    """A job's own resources (a plugin may set them) over the budget: rc -2
    and a clear message, the other jobs run."""
    class Bigger:
        name = "bigger_plugin"

        @plugin.impl
        async def on_job_init(scheduler, job):
            if job.index == 0:
                job.resources = Resources(cpus=3)

    xq = Xqute(workdir=workdir, forks=2, plugins=[Bigger], scheduler_opts={"cpu_budget": 2})
    big = await xq.feed(["true"])
    small = await xq.feed(["true"])
    await asyncio.wait_for(xq.run_until_complete(), 30)
    assert await big.get_rc() == -2
    assert "asks for 3 CPUs, more than the whole cpu_budget (2)" in Path(big.stderr_file).read_text()
    assert await small.get_rc() == 0


def test_the_container_scheduler_keeps_no_budget(workdir, tmp_path):
    fake = tmp_path / "fake_runtime" / "podman"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 99\n")
    fake.chmod(0o755)
    sched = ContainerScheduler(workdir, image="img", bin=str(fake), resources={"cpus": 64})
    assert sched.cpu_budget is None
    with pytest.raises(ValueError, match="keeps no cpu_budget"):
        ContainerScheduler(workdir, image="img", bin=str(fake), cpu_budget=2)


async def test_a_retried_job_counts_its_cpus_again(workdir):
    """A retried trial (the retry policy changes memory and time, not cpus)
    still waits for its CPUs."""
    xq = Xqute(
        workdir=workdir, forks=3, error_strategy="retry", num_retries=1,
        scheduler_opts={"resources": {"cpus": 2}, "cpu_budget": 2},
    )
    await xq.feed(["bash", "-c", STAMPED + '; [ -e "$2" ] || { touch "$2"; exit 1; }',
                   "x", "0.3", str(workdir / "once")])
    await xq.feed(stamped(0.3))
    await asyncio.wait_for(xq.run_until_complete(), 30)
    assert await all_succeeded(xq)
    assert peak_overlap(intervals(xq)) == 1
