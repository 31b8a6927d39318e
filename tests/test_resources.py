"""The one resource request (xqute.resources): parsing, checks, escalation."""

from __future__ import annotations

import pytest

from xqute.resources import (
    DEFAULT_RETRY_POLICY,
    Resources,
    parse_memory,
    parse_retry_policy,
    parse_time,
)


@pytest.mark.parametrize(
    "value, megabytes",
    [("4G", 4096), ("4g", 4096), ("512M", 512), ("1.5GB", 1536), ("2048", 2048), (100, 100),
     ("1T", 1024 * 1024), ("1536K", 2), ("4 GiB", 4096)],
)
def test_memory_sizes(value, megabytes):
    assert parse_memory(value) == megabytes


@pytest.mark.parametrize("value", ["-1G", "0", "lots", "4X", "", True, "1e9", 0.5, "G"])
def test_memory_nonsense_is_refused(value):
    with pytest.raises(ValueError, match="memory"):
        parse_memory(value)


@pytest.mark.parametrize(
    "value, seconds",
    [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("1d", 86400), ("1:30:00", 5400),
     ("30:00", 1800), ("1-12:00:00", 129600), ("45", 45), (3600, 3600), (1.2, 2), ("0.5h", 1800)],
)
def test_durations(value, seconds):
    assert parse_time(value) == seconds


@pytest.mark.parametrize("value", ["-5", "0", "soon", "2x", "", "1:2:3:4", True, -1, "h"])
def test_duration_nonsense_is_refused(value):
    with pytest.raises(ValueError, match="time"):
        parse_time(value)


def test_a_spec_parses_to_resources_and_back():
    res = Resources.parse({"cpus": 4, "memory": "8G", "time": "2h", "gpus": 1})
    assert res == Resources(cpus=4, memory_mb=8192, time_s=7200, gpus=1)
    assert res.as_dict() == {"cpus": 4, "memory": "8192M", "time": 7200, "gpus": 1}
    assert res.clock == "02:00:00"
    assert Resources(time_s=86400 + 61).clock == "1-00:01:01"
    assert not Resources.parse(None) and not Resources.parse({})


@pytest.mark.parametrize(
    "spec, message",
    [({"cpu": 2}, "unknown key"), ({"cpus": 0}, "cpus must be at least 1"),
     ({"cpus": -2}, "cpus"), ({"cpus": "many"}, "cpus"), ({"gpus": -1}, "gpus"),
     ({"memory": "-1G"}, "memory"), ({"time": "forever"}, "time"), ("4G", "mapping"),
     ({"cpus": True}, "cpus")],
)
def test_bad_specs_name_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        Resources.parse(spec)


def test_scaling_and_limits():
    res = Resources(cpus=2, memory_mb=1000, time_s=60)
    assert res.scaled(memory=2.0) == Resources(cpus=2, memory_mb=2000, time_s=60)
    assert res.scaled(time=1.5) == Resources(cpus=2, memory_mb=1000, time_s=90)
    limits = Resources(memory_mb=1500)
    assert res.over(limits) == ""
    assert res.scaled(memory=2.0).over(limits) == "memory_mb 2000 is over the limit 1500"


def test_retry_policy_defaults_and_overrides():
    assert parse_retry_policy(None) == DEFAULT_RETRY_POLICY
    policy = parse_retry_policy({"oom": {"memory": 3}, "timeout": None})
    assert policy["oom"] == {"memory": 3} and "timeout" not in policy
    for bad in ({"ooom": {"memory": 2}}, {"oom": {"memory": 0.5}}, {"oom": {"disk": 2}}, "double"):
        with pytest.raises(ValueError, match="retry_policy"):
            parse_retry_policy(bad)


async def test_the_wrapper_enforces_time_where_the_scheduler_does_not(workdir):
    from xqute import Xqute

    xq = Xqute("local", workdir=workdir, forks=2, scheduler_opts={"resources": {"time": "1s"}})
    slow = await xq.feed(["sleep", "30"])
    quick = await xq.feed(["true"])
    await xq.run_until_complete()
    assert await slow.get_rc() == 124
    assert "timed out" in slow.stderr_file.read_text()
    assert await quick.get_rc() == 0


async def test_the_shorter_of_timeout_and_resources_time_wins(workdir):
    from xqute.schedulers.local_scheduler import LocalScheduler
    from xqute.schedulers.slurm_scheduler import SlurmScheduler

    local = LocalScheduler(workdir, timeout=10, resources={"time": "1h"})
    job = await local.create_job(0, ["true"])
    await local.queue_job(job)
    assert local.time_limit(job) == 10
    assert "timeout 10 " in local.wrap_job_script(job)
    # Slurm ends the job itself at --time: the wrapper adds no timeout of its own
    slurm = SlurmScheduler(workdir, resources={"time": "1h"})
    job = await slurm.create_job(1, ["true"])
    await slurm.queue_job(job)
    assert slurm.time_limit(job) == 0 and "eval \"$cmd\"" in slurm.wrap_job_script(job)
