"""``resources`` on the container scheduler: ``--cpus``/``--memory`` (and
docker's ``--gpus``) on the run command line, a raw option in ``bin_args``
winning with one warning; against the real podman (``scripts/podman.sh``), the
limits are seen from inside the container and a job over its memory is killed.

This machine's podman runs on cgroups v1 (hybrid), where a container sees its
own limits under /sys/fs/cgroup/memory and /sys/fs/cgroup/cpu; the job reads
the cgroups v2 files instead where those exist.
"""

from __future__ import annotations

import json
import logging

import pytest

from tests.test_container_scheduler import (  # noqa: F401 - fixtures
    fake_runtime,
    image,
    need_bin,
    read,
    run_jobs,
    runtime_bins,
    unique_prefix,
)
from xqute import JobStatus, Xqute
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


# ------------------------------------------------- usage records and causes
# CPU burnt until the job's own shell has used 1.2 s of it (user + sys, in the
# kernel's clock ticks, /proc/<pid>/stat fields 14 and 15): as long as the
# machine needs, never a wall-clock wait.
BURN = (
    'tck=$(getconf CLK_TCK 2>/dev/null || echo 100); '
    'while :; do read -r -a st </proc/$BASHPID/stat; '
    '(( (st[13] + st[14]) * 10 >= tck * 12 )) && break; done'
)
# a job's command expands $NAME in the wrapper: \$ keeps it for the job's bash
BURN_ARG = BURN.replace("$", "\\$")
# 200 MB written into a buffer dd holds at once
ALLOC_200M = "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null"


def test_cgroup_memory_figures_and_the_oom_rule():
    from xqute.schedulers.container_scheduler import cgroup_memory_figures, oom_from_cgroup

    raw = "1.0 2.0 host\n0m0.0s 0m0.0s\n0m1.0s 0m0.0s\npeak 67108864\noom_kill 1\nlimit 67108864\n"
    figures = cgroup_memory_figures(raw)
    assert figures == {"peak": 67108864, "oom_kill": 1, "limit": 67108864}
    assert oom_from_cgroup(137, figures)
    assert oom_from_cgroup(1, figures)  # a script that went on after its child was killed
    assert not oom_from_cgroup(0, figures)
    assert not oom_from_cgroup(137, {**figures, "oom_kill": 0})  # a kill, not the OOM killer
    # v2's "max" limit is no number; without a count, a SIGKILL near the limit is oom
    assert cgroup_memory_figures(raw.replace("limit 67108864", "limit max"))["peak"] == 67108864
    assert oom_from_cgroup(137, {"peak": 62 * 2**20, "limit": 64 * 2**20})
    assert not oom_from_cgroup(137, {"peak": 20 * 2**20, "limit": 64 * 2**20})
    assert not oom_from_cgroup(143, {"peak": 64 * 2**20, "limit": 64 * 2**20})
    assert not oom_from_cgroup(137, {"peak": 64 * 2**20, "limit": 2**63 - 4096})
    assert cgroup_memory_figures(None) == {}


async def test_the_wrapper_reads_the_cgroup_with_builtins_only(tmp_path, fake_runtime):
    """docker/podman: _xq_peak tries v2's files, then v1's; apptainer has none."""
    sched = ContainerScheduler(str(tmp_path / "wd"), image="img", bin=fake_runtime("podman"))
    job = await sched.create_job(0, "true")
    text = sched.wrap_job_script(job)
    body = text[text.index("_xq_peak() {"):]
    body = body[: body.index("\n}\n")]
    for path in (
        "/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
        "/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control",
    ):
        assert path in body
    assert "$(" not in body and "cat " not in body  # no helper process
    apptainer = ContainerScheduler(str(tmp_path / "wd2"), image="x.sif", bin=fake_runtime("apptainer"))
    job = await apptainer.create_job(0, "true")
    assert "_xq_peak() { :; }" in apptainer.wrap_job_script(job)


@pytest.mark.parametrize("runtime", runtime_bins())
async def test_usage_of_a_job_in_a_real_container(workdir, image, runtime):
    """200 MB held at once and 1.2 s of CPU: the record says so, from the
    container's cgroup and the wrapper's own measurement."""
    need_bin(runtime)
    xq = await run_jobs(
        workdir, [["bash", "-c", f"{ALLOC_200M} && {BURN_ARG}"]], image=image, bin=runtime,
        resources={"memory": "512M", "time": 600},  # time: a bound, should the loop not end
    )
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    usage = await job.get_usage()
    assert usage is not None and usage == job.usage
    assert usage["cause"] == "ok" and usage["rc"] == 0
    assert 200 <= usage["peak_memory_mb"] <= 512, usage
    assert usage["sources"]["peak_memory_mb"] == "cgroup"
    assert usage["cpu_s"] >= 0.9, usage
    assert usage["wall_s"] >= usage["cpu_s"] * 0.5, usage  # one CPU's worth, at most about
    assert usage["host"]  # the container's hostname
    assert usage["requested"] == {"memory": "512M", "time": 600}


@pytest.mark.parametrize("runtime", runtime_bins())
async def test_a_job_over_its_memory_ends_oom_and_its_retry_with_twice_the_memory_succeeds(
    workdir, image, runtime
):
    """80 MB in a 64M container: the OOM killer (counted in the container's
    cgroup), cause oom; the retry gets --memory 128m and succeeds."""
    need_bin(runtime)
    xq = Xqute(
        "container", workdir=workdir, jobname_prefix=unique_prefix(),
        error_strategy="retry", num_retries=1,
        scheduler_opts={"image": image, "bin": runtime, "resources": {"memory": "64M"}},
    )
    await xq.feed(["bash", "-c", "dd if=/dev/zero of=/dev/null bs=80M count=1"])
    await xq.run_until_complete()
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    assert job.trial_count == 1
    first = json.loads(read(job.retry_dir / "0" / "job.usage"))
    assert first["cause"] == "oom" and first["rc"] == 137, first
    assert first["requested"] == {"memory": "64M"}
    assert "oom_kill 1" in read(job.retry_dir / "0" / "job.usage.raw")
    second = await job.get_usage()
    assert second["cause"] == "ok" and second["requested"] == {"memory": "128M"}, second
    assert "--memory 128m" in read(job.metadir / "job.container.log").splitlines()[0]


async def test_a_sigkill_that_is_no_oom_stays_killed(workdir, image):
    """A job that kills itself with SIGKILL, well under its limit: killed, not oom."""
    xq = await run_jobs(
        workdir, [["bash", "-c", "kill -KILL $$"]], image=image, bin="podman",
        resources={"memory": "64M"},
    )
    job = xq.jobs[0]
    assert await job.get_rc() == 137, read(job.stderr_file)
    usage = await job.get_usage()
    assert usage["cause"] == "killed", usage
    assert "oom_kill 0" in read(job.metadir / "job.usage.raw")


async def test_a_job_over_its_time_ends_timeout_and_its_retry_asks_half_as_much_again(
    workdir, image
):
    """time 2 s: the wrapper's timeout (GNU timeout in the image) ends the
    first trial, rc 124, cause timeout; the retry asks 3 s and, finding the
    first trial's mark in the workdir, ends at once."""
    xq = Xqute(
        "container", workdir=workdir, jobname_prefix=unique_prefix(),
        error_strategy="retry", num_retries=1,
        scheduler_opts={"image": image, "bin": "podman", "resources": {"time": 2}},
    )
    # the job's folder is the mounted workdir, where the mark outlives the trial
    job = await xq.feed(["bash", "-c", '[ -e first-trial-ran ] && exit 0; : >first-trial-ran; sleep 120'])
    await xq.run_until_complete()
    assert await job.get_rc() == 0, read(job.stderr_file)
    assert job.trial_count == 1
    first = json.loads(read(job.retry_dir / "0" / "job.usage"))
    assert first["rc"] == 124 and first["cause"] == "timeout", first
    assert first["requested"] == {"time": 2}
    second = await job.get_usage()
    assert second["cause"] == "ok" and second["requested"] == {"time": 3}, second
    assert "timeout 3 " in read(job.metadir / "job.wrapped.container")
    assert (workdir / "first-trial-ran").exists()
