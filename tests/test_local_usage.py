"""Usage and memory on the local scheduler: wait4's rusage in the usage
record, a memory cgroup per trial where the machine allows it (its peak, its
OOM kills as cause ``oom``, a retry with twice the memory), the best-effort
``ulimit -d`` elsewhere, and time enforced by the wrapper.

Tests that need a writable memory cgroup skip where there is none, but fail
under ``CI=true`` (CI machines are expected to have one).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
from pathlib import Path

import pytest

from xqute import JobStatus, Xqute
from xqute.schedulers import local_scheduler
from xqute.schedulers.local_scheduler import MemoryCgroups

def allocate_and_burn(megabytes: int = 200) -> list[str]:
    """Touches ``megabytes`` (bytes * writes every page), then burns 1.2 s of CPU."""
    return [
        "python3",
        "-c",
        "import time\n"
        f"b = b'x' * ({megabytes} * 2**20)\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 1.2: pass\n"
        "print(len(b))",
    ]


def own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def allocate(megabytes: int) -> list[str]:
    return ["python3", "-c", f"b = b'x' * ({megabytes} * 2**20); print(len(b))"]


def retry_record(job, trial: int) -> dict:
    return json.loads((job.metadir / "job.retry" / str(trial) / "job.usage").read_text())


@pytest.fixture
def memory_cgroups():
    """A MemoryCgroups where one can be made (removed after the test)."""
    found = MemoryCgroups.find()
    if isinstance(found, str):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no writable memory cgroup: {found}")
        pytest.skip(f"no writable memory cgroup here: {found}")
    yield found
    found.close()


def xqute_parents(memcg: MemoryCgroups) -> list[str]:
    """This process's xqute-<pid>-* cgroups next to ``memcg``'s parent."""
    place = os.path.dirname(memcg.parent)
    mine = f"xqute-{os.getpid()}-"
    return sorted(e for e in os.listdir(place) if e.startswith(mine))


# ---------------------------------------------------------------- recording
async def test_rusage_gives_peak_memory_and_the_wrapper_cpu(workdir):
    """No memory asked (no cgroup): peak memory from wait4's ru_maxrss (a
    figure above this process's own peak: see the next test)."""
    xq = Xqute("local", workdir=workdir)
    job = await xq.feed(allocate_and_burn(max(200, int(own_peak_mb()) + 100)))
    await xq.run_until_complete()
    assert await job.get_rc() == 0
    usage = await job.get_usage()
    assert usage["peak_memory_mb"] >= 200, usage
    assert usage["cpu_s"] >= 0.9, usage
    assert usage["sources"]["peak_memory_mb"] == "rusage"
    assert usage["sources"]["cpu_s"] == "wrapper"
    assert usage["cause"] == "ok"
    # nothing kept per job once its record is written
    assert xq.scheduler._rusage == {} and xq.scheduler._rusage_wanted == set()


async def test_a_small_jobs_rusage_peak_is_left_out(workdir):
    """posix_spawn's child execs from the manager's memory, so the kernel
    counts the manager's peak into the wrapper's ru_maxrss: a job that used
    less than the manager gets no peak from rusage rather than the manager's."""
    xq = Xqute("local", workdir=workdir)
    job = await xq.feed(["true"])
    await xq.run_until_complete()
    usage = await job.get_usage()
    assert usage["cause"] == "ok"
    assert usage["peak_memory_mb"] is None and "peak_memory_mb" not in usage["sources"], usage


async def test_the_cgroup_gives_peak_memory_when_memory_is_asked(workdir, memory_cgroups):
    """The cgroup's peak counts the job alone, whatever the manager's size."""
    xq = Xqute("local", workdir=workdir, scheduler_opts={"resources": {"memory": "1G"}})
    job = await xq.feed(allocate_and_burn(200))
    await xq.run_until_complete()
    assert await job.get_rc() == 0
    usage = await job.get_usage()
    assert usage["peak_memory_mb"] >= 200, usage
    assert usage["cpu_s"] >= 0.9, usage
    assert usage["sources"]["peak_memory_mb"] == "cgroup"
    assert usage["requested"] == {"memory": "1024M"}


async def test_a_wrapper_ended_by_a_signal_gets_its_cpu_from_rusage(workdir):
    """SIGKILL to the wrapper itself: it cannot measure its command, wait4 can
    (the command, in its own group, is waited for by the wrapper only, so the
    figure is the wrapper's own: small, but there)."""
    xq = Xqute("local", workdir=workdir)
    # the command kills its wrapper, whose pid is the job id (in job.jid)
    jid_file = str(workdir / "0" / "job.jid")  # job 0's metadir
    job = await xq.feed(["bash", "-c", 'until [ -s "$0" ]; do sleep 0.05; done; kill -KILL $(<"$0")', jid_file])
    await xq.run_until_complete()
    usage = await job.get_usage()
    assert job.status == JobStatus.FAILED
    assert usage["sources"].get("cpu_s") == "rusage", usage
    assert usage["cpu_s"] >= 0


async def test_usage_false_keeps_no_rusage(workdir):
    """usage=False: no record, and no rusage kept per job either."""
    xq = Xqute("local", workdir=workdir, scheduler_opts={"usage": False})
    jobs = [await xq.feed(["true"]) for _ in range(3)]
    await xq.run_until_complete()
    assert [await job.get_rc() for job in jobs] == [0, 0, 0]
    assert all(not (job.metadir / "job.usage").exists() for job in jobs)
    assert xq.scheduler._rusage == {} and xq.scheduler._rusage_wanted == set()


# ---------------------------------------------------------------- the cgroup
async def test_the_command_runs_in_the_jobs_own_limited_cgroup(workdir, memory_cgroups):
    """The wrapper joins its cgroup first: the command is in it, limited."""
    xq = Xqute("local", workdir=workdir, scheduler_opts={"resources": {"memory": "300M"}})
    limit_file = "memory.limit_in_bytes" if memory_cgroups.version == 1 else "memory.max"
    place = os.path.dirname(memory_cgroups.parent)
    job = await xq.feed(
        ["bash", "-c", f'cat /proc/self/cgroup; cat "$0"/xqute-{os.getpid()}-*/job0.1/{limit_file}', place]
    )
    await xq.run_until_complete()
    assert await job.get_rc() == 0
    parent = xq.scheduler.memory_cgroups
    assert parent is None  # closed at the run's end
    lines = Path(job.stdout_file).read_text().splitlines()
    assert lines[-1] == str(300 * 2**20)  # the limit, read by the job itself
    memory_line = [
        line for line in lines
        if line.count(":") >= 2
        and ("memory" in line.split(":")[1].split(",") if memory_cgroups.version == 1 else line.startswith("0::"))
    ]
    assert memory_line and f"/xqute-{os.getpid()}-" in memory_line[0], lines
    assert memory_line[0].rsplit("/", 1)[1] == "job0.1"
    wrapper = (job.metadir / "job.wrapped.local").read_text()
    # the join is the wrapper's first command
    assert wrapper.splitlines()[2].startswith("{ echo $$ >") and "/cgroup.procs" in wrapper.splitlines()[2]
    # the job's cgroup and the manager's parent are gone after the run
    assert xqute_parents(memory_cgroups) == [os.path.basename(memory_cgroups.parent)]


async def test_a_held_job_joins_its_own_cgroup_when_let_go(workdir, memory_cgroups):
    """CPU budget 1, two 1-CPU jobs: the second waits, held, then runs in a
    cgroup of its own."""
    xq = Xqute(
        "local", workdir=workdir, forks=2,
        scheduler_opts={"resources": {"memory": "300M", "cpus": 1}, "cpu_budget": 1},
    )
    jobs = [await xq.feed(["bash", "-c", "sleep 0.3; cat /proc/self/cgroup"]) for _ in range(2)]
    await xq.run_until_complete()
    names = []
    for job in jobs:
        assert await job.get_rc() == 0
        lines = Path(job.stdout_file).read_text().splitlines()
        ours = [line for line in lines if f"/xqute-{os.getpid()}-" in line]
        assert len(ours) == 1, lines
        names.append(ours[0].rsplit("/", 1)[1])
    assert sorted(names) == ["job0.1", "job1.2"]


async def test_over_its_memory_a_job_is_oom_and_retried_with_twice_the_memory(workdir, memory_cgroups):
    xq = Xqute(
        "local", workdir=workdir, error_strategy="retry", num_retries=1,
        scheduler_opts={"resources": {"memory": "100M"}},
    )
    job = await xq.feed(allocate(150))
    await xq.run_until_complete()
    assert await job.get_rc() == 0 and job.trial_count == 1
    first = retry_record(job, 0)
    assert first["cause"] == "oom", first
    assert first["rc"] == 128 + signal.SIGKILL
    assert first["requested"]["memory"] == "100M"
    # the cgroup's peak is its limit at most
    assert first["sources"]["peak_memory_mb"] == "cgroup" and first["peak_memory_mb"] <= 100
    second = await job.get_usage()
    assert second["cause"] == "ok" and second["requested"]["memory"] == "200M"
    assert second["peak_memory_mb"] >= 150 and second["sources"]["peak_memory_mb"] == "cgroup"
    assert xqute_parents(memory_cgroups) == [os.path.basename(memory_cgroups.parent)]


async def test_a_failure_under_the_limit_is_not_oom(workdir, memory_cgroups):
    xq = Xqute("local", workdir=workdir, scheduler_opts={"resources": {"memory": "200M"}})
    job = await xq.feed(["bash", "-c", "exit 3"])
    killed = await xq.feed(["bash", "-c", "kill -KILL $$"])
    await xq.run_until_complete()
    assert (await job.get_usage())["cause"] == "failed"
    assert (await killed.get_usage())["cause"] == "killed"


async def test_a_wrapper_that_cannot_join_its_cgroup_says_so(workdir, tmp_path):
    """The cgroup is gone (or not writable) when the wrapper starts: the job
    still runs, and its stderr says the limit does not hold."""
    xq = Xqute("local", workdir=workdir, scheduler_opts={"resources": {"memory": "100M"}})
    gone = str(tmp_path / "no such cgroup")
    memcg = MemoryCgroups(1, str(tmp_path / "no such parent"))
    memcg.make = lambda index, memory_mb: gone
    xq.scheduler._memcg = memcg
    job = await xq.feed(["echo", "ran"])
    await xq.run_until_complete()
    assert await job.get_rc() == 0
    assert Path(job.stdout_file).read_text() == "ran\n"
    assert Path(job.stderr_file).read_text() == (
        f"xqute: could not join the memory cgroup {gone}: the memory limit does not hold\n"
    )


def test_cgroups_of_dead_managers_are_swept(memory_cgroups):
    """An empty xqute-<pid>-* cgroup whose manager is gone is removed when
    the next manager looks for its cgroups; a live manager's is kept."""
    place = os.path.dirname(memory_cgroups.parent)
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    stale = os.path.join(place, f"xqute-{dead_pid.pid}-00beef")
    os.mkdir(stale)
    os.mkdir(os.path.join(stale, "job3.1"))
    another = MemoryCgroups.find()
    assert isinstance(another, MemoryCgroups)
    try:
        assert not os.path.exists(stale)
        assert os.path.isdir(memory_cgroups.parent)  # ours: this process is alive
    finally:
        another.close()
        if os.path.exists(stale):
            os.rmdir(os.path.join(stale, "job3.1"))
            os.rmdir(stale)


# ---------------------------------------------------------------- best effort
async def test_without_a_cgroup_ulimit_limits_the_command_and_oom_is_read_from_stderr(workdir):
    """No cgroup (forced here): ``ulimit -d`` on the command's shell; Python's
    MemoryError at the end of stderr makes the cause oom; the retry with
    twice the memory succeeds."""
    xq = Xqute(
        "local", workdir=workdir, error_strategy="retry", num_retries=1,
        scheduler_opts={"resources": {"memory": "100M"}},
    )
    xq.scheduler._memcg = "forced for the test"
    job = await xq.feed(allocate(150))
    await xq.run_until_complete()
    assert await job.get_rc() == 0 and job.trial_count == 1
    first = retry_record(job, 0)
    assert first["cause"] == "oom" and first["rc"] == 1, first
    assert "MemoryError" in (job.metadir / "job.retry" / "0" / "job.stderr").read_text()
    second = await job.get_usage()
    assert second["cause"] == "ok" and second["requested"]["memory"] == "200M"
    if own_peak_mb() < 150:  # else rusage cannot tell the job's peak from the manager's
        assert second["peak_memory_mb"] >= 150 and second["sources"]["peak_memory_mb"] == "rusage"
    wrapper = (job.metadir / "job.wrapped.local").read_text()
    assert "{ ulimit -S -d 204800 2>/dev/null; eval " in wrapper
    assert "cgroup.procs" not in wrapper


async def test_without_a_cgroup_other_failures_stay_failed(workdir):
    xq = Xqute("local", workdir=workdir, scheduler_opts={"resources": {"memory": "100M"}})
    xq.scheduler._memcg = "forced for the test"
    job = await xq.feed(["bash", "-c", "echo nothing to see >&2; exit 2"])
    await xq.run_until_complete()
    assert (await job.get_usage())["cause"] == "failed"


# ---------------------------------------------------------------- time
async def test_over_its_time_a_job_times_out_and_its_retry_asks_for_more(workdir):
    """The wrapper's timeout ends the first trial (cause timeout); the retry's
    wrapper carries 1.5x the time (the first trial ran past its limit, the
    second ends at once, so no timing margin is involved)."""
    flag = workdir / "second"
    xq = Xqute(
        "local", workdir=workdir, error_strategy="retry", num_retries=1,
        scheduler_opts={"resources": {"time": 2}},
    )
    job = await xq.feed(["bash", "-c", '[ -e "$0" ] && exit 0; touch "$0"; sleep 30', str(flag)])
    await xq.run_until_complete()
    assert await job.get_rc() == 0 and job.trial_count == 1
    first = retry_record(job, 0)
    assert first["cause"] == "timeout" and first["rc"] == 124 and first["requested"]["time"] == 2
    assert first["wall_s"] >= 2  # the job's own clock: it ran to its limit
    second = await job.get_usage()
    assert second["cause"] == "ok" and second["requested"]["time"] == 3
    assert re.search(r'eval "(exec )?timeout 3 \$cmd"', (job.metadir / "job.wrapped.local").read_text())


# ---------------------------------------------------------------- finding cgroups
def fake_proc(monkeypatch, cgroup: str, mountinfo: str) -> None:
    files = {"/proc/self/cgroup": cgroup, "/proc/self/mountinfo": mountinfo}
    monkeypatch.setattr(local_scheduler, "_read_text", lambda path: files.get(path))


def test_v1_hierarchy_in_a_container_without_a_cgroup_namespace(monkeypatch):
    fake_proc(
        monkeypatch,
        "12:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        "30 25 0:27 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "31 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    )
    assert local_scheduler._memory_hierarchy() == (1, "/sys/fs/cgroup/memory", "")


def test_v2_hierarchy(monkeypatch):
    fake_proc(
        monkeypatch,
        "0::/user.slice/user-0.slice/session-3.scope\n",
        "22 1 0:21 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
    )
    assert local_scheduler._memory_hierarchy() == (
        2, "/sys/fs/cgroup", "/user.slice/user-0.slice/session-3.scope",
    )


def test_no_memory_hierarchy(monkeypatch):
    fake_proc(monkeypatch, "1:cpu:/\n", "30 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    assert "no memory cgroup" in local_scheduler._memory_hierarchy()
