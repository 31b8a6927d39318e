"""``resources`` on the container scheduler: ``--cpus``/``--memory`` (and
docker's ``--gpus``) on the run command line, a raw option in ``bin_args``
winning with one warning; against the real podman (``scripts/podman.sh``), the
limits are seen from inside the container and a job over its memory is killed.

This machine's podman runs on cgroups v1 (hybrid), where a container sees its
own limits under /sys/fs/cgroup/memory and /sys/fs/cgroup/cpu; the job reads
the cgroups v2 files instead where those exist.
"""

from __future__ import annotations

import logging

import pytest

from tests.test_container_scheduler import (  # noqa: F401 - fixtures
    fake_runtime,
    image,
    need_bin,
    read,
    run_jobs,
    runtime_bins,
)
from xqute import JobStatus
from xqute.schedulers.container_scheduler import ContainerScheduler, given_flag


def flags_of(argv: list[str], image_name: str) -> list[str]:
    """The run options between the mounts and the image."""
    before = argv[: argv.index(image_name)]
    last_mount = max(i for i, word in enumerate(before) if word in ("-v", "--bind"))
    return before[last_mount + 2 :]


async def test_cpus_and_memory_become_run_options(tmp_path, fake_runtime):
    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="img", bin=fake_runtime("podman"),
        resources={"cpus": 2, "memory": "1.5G", "time": "1h", "gpus": 1},
        bin_args=["--network", "none"],
    )
    job = await sched.create_job(0, "true")
    await sched.queue_job(job)
    argv = sched.container_command(job, "n")
    # podman has no count of GPUs: no --gpus; time is the wrapper's timeout
    assert flags_of(argv, "img") == ["--cpus", "2", "--memory", "1536m", "--network", "none"]
    assert sched.time_limit(job) == 3600


async def test_docker_gets_a_count_of_gpus(tmp_path, fake_runtime):
    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="img", bin=fake_runtime("docker"),
        resources={"memory": "64M", "gpus": 2},
    )
    job = await sched.create_job(0, "true")
    await sched.queue_job(job)
    assert flags_of(sched.container_command(job, "n"), "img") == [
        "--memory", "64m", "--gpus", "2",
    ]


async def test_podman_gpus_are_left_out_with_a_debug_log(tmp_path, fake_runtime, caplog):
    caplog.set_level(logging.DEBUG, logger="XQUTE")
    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="img", bin=fake_runtime("podman"), resources={"gpus": 1},
    )
    job = await sched.create_job(0, "true")
    await sched.queue_job(job)
    assert "--gpus" not in sched.container_command(job, "n")
    notes = [r for r in caplog.records if "gpus are not applied" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.DEBUG


async def test_a_raw_option_in_bin_args_wins_with_one_warning(tmp_path, fake_runtime, caplog):
    caplog.set_level(logging.WARNING)
    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="img", bin=fake_runtime("docker"),
        resources={"cpus": 2, "memory": "1G", "gpus": 1},
        bin_args=["--cpus=4", "-m512m", "--gpus", "all"],
    )
    for index in range(3):
        job = await sched.create_job(index, "true")
        await sched.queue_job(job)
        assert flags_of(sched.container_command(job, "n"), "img") == [
            "--cpus=4", "-m512m", "--gpus", "all",
        ]
    warnings = [r.getMessage() for r in caplog.records if "overrides resources" in r.getMessage()]
    assert len(warnings) == 3, warnings  # one per resource, not per job
    assert any("'--cpus'" in w for w in warnings) and any("'-m'" in w for w in warnings)


@pytest.mark.parametrize(
    "args, names, found",
    [
        (["--cpus", "2"], ("--cpus",), "--cpus"),
        (["--cpus=2"], ("--cpus",), "--cpus"),
        (["--cpu-quota", "50000"], ("--cpus", "--cpu-quota"), "--cpu-quota"),
        (["--cpuset-cpus", "0"], ("--cpus", "--cpu-quota", "--cpu-period"), None),
        (["-m", "1g"], ("--memory", "-m"), "-m"),
        (["-m1g"], ("--memory", "-m"), "-m"),
        (["--memory-swap", "1g"], ("--memory", "-m"), None),
        (["--memory-reservation=1g"], ("--memory", "-m"), None),
        (["--mount", "type=tmpfs,dst=/x"], ("--memory", "-m"), None),
    ],
)
def test_given_flag(args, names, found):
    assert given_flag(args, names) == found


async def test_apptainer_applies_none_and_says_so_once(tmp_path, fake_runtime, caplog):
    caplog.set_level(logging.WARNING)
    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="tool.sif", bin=fake_runtime("apptainer"),
        resources={"cpus": 2, "memory": "1G"},
    )
    for index in range(2):
        job = await sched.create_job(index, "true")
        await sched.queue_job(job)
        argv = sched.container_command(job)
        assert "--cpus" not in argv and "--memory" not in argv
    warnings = [r.getMessage() for r in caplog.records if "are not applied" in r.getMessage()]
    assert len(warnings) == 1 and "cpus/memory" in warnings[0]


async def test_an_escalated_memory_reaches_the_next_trials_command_line(tmp_path, fake_runtime):
    """The retry policy doubles memory after an oom: the job's own resources,
    not the scheduler's, make the command line."""
    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="img", bin=fake_runtime("podman"), resources={"memory": "64M"},
    )
    job = await sched.create_job(0, "true")
    await sched.queue_job(job)
    job.resources = job.resources.scaled(memory=2.0)
    assert flags_of(sched.container_command(job, "n"), "img") == ["--memory", "128m"]


# ------------------------------------------------------------ real podman
LIMITS = (
    "if [ -r /sys/fs/cgroup/memory.max ]; then "
    "  echo mem $(cat /sys/fs/cgroup/memory.max); echo cpu $(cat /sys/fs/cgroup/cpu.max); "
    "else "
    "  echo mem $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); "
    "  echo cpu $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us); "
    "fi"
)


@pytest.mark.parametrize("runtime", runtime_bins())
async def test_the_limits_are_seen_inside_the_container(workdir, image, runtime):
    need_bin(runtime)
    xq = await run_jobs(
        workdir, [["bash", "-c", LIMITS]], image=image, bin=runtime,
        resources={"cpus": 1, "memory": "64M"},
    )
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    lines = dict(line.split(" ", 1) for line in read(job.stdout_file).splitlines())
    assert int(lines["mem"]) == 64 * 2**20
    quota, period = (int(word) for word in lines["cpu"].split())
    assert quota == period  # one CPU's worth of each period
    # what was run, as the client log records it
    head = read(job.metadir / "job.container.log").splitlines()[0]
    assert "--cpus 1 --memory 64m" in head


async def test_a_job_over_its_memory_is_killed(workdir, image):
    """podman enforces --memory here: 200M in a 64M container is killed (the
    kernel's OOM killer, SIGKILL: 137), 16M in the same limit runs."""
    dd = ["dd", "if=/dev/zero", "of=/dev/null", "count=1"]
    xq = await run_jobs(
        workdir, [[*dd, "bs=200M"], [*dd, "bs=16M"]], image=image, bin="podman",
        resources={"memory": "64M"},
    )
    over, under = xq.jobs
    assert await over.get_rc() == 137, read(over.stderr_file)
    assert await over.get_status(refresh=True) == JobStatus.FAILED
    assert await under.get_rc() == 0, read(under.stderr_file)
