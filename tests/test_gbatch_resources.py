"""``resources`` on Google Cloud Batch: cpus, memory, time and gpus in the job
JSON (``computeResource``, ``maxRunDuration``, ``accelerators``), a value the
user put in the live ``config`` winning with one warning.

The JSON is checked as the scheduler builds it, then end to end as Batch got
it: through the real ``gcloud`` to the loopback Batch API
(``scripts/fake_batch_api.py``), which keeps every submitted job.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.test_gbatch import batch, batch_xqute, fake_api, make, spec_of  # noqa: F401 - fixture
from xqute.resources import Resources
from xqute.scheduler import SubmissionError
from xqute.schedulers.gbatch_scheduler import GbatchScheduler, parse_member_jid


async def json_for(scheduler: GbatchScheduler, index: int = 0, resources: Resources | None = None) -> dict:
    job = scheduler.job_class(index, ["true"], scheduler.workdir)
    if resources is not None:
        job.resources = resources
    await scheduler.queue_job(job)
    return scheduler.job_json(job, job.metadir / scheduler.wrapped_script_name)


def gpus_of(config: dict) -> tuple[list, object]:
    instance = config["allocationPolicy"]["instances"][0]
    return instance["policy"]["accelerators"], instance.get("installGpuDrivers")


# ------------------------------------------------------------------ the JSON
async def test_resources_become_compute_resource_max_run_duration_and_accelerators():
    scheduler = make(
        resources={"cpus": 2, "memory": "1.5G", "time": "1h30m", "gpus": 1},
        gpu_type="nvidia-tesla-t4", machine_type="n1-standard-4",
    )
    await scheduler.post_init()
    config = await json_for(scheduler)
    spec = spec_of(config)
    assert spec["computeResource"] == {"cpuMilli": "2000", "memoryMib": "1536"}
    assert spec["maxRunDuration"] == "5400s"
    assert gpus_of(config) == ([{"type": "nvidia-tesla-t4", "count": "1"}], True)
    # the options' instance policy is kept beside the accelerators
    assert config["allocationPolicy"]["instances"][0]["policy"]["machineType"] == "n1-standard-4"
    # config itself is not changed: each submission maps its own job's request
    assert "computeResource" not in spec_of(scheduler.config)
    assert "allocationPolicy" not in scheduler.config or not scheduler.config[
        "allocationPolicy"]["instances"][0]["policy"].get("accelerators")


async def test_no_resources_leave_the_json_as_it_was():
    scheduler = make()
    await scheduler.post_init()
    config = await json_for(scheduler)
    assert "computeResource" not in spec_of(config) and "maxRunDuration" not in spec_of(config)
    assert "allocationPolicy" not in config


async def test_each_job_gets_its_own_request():
    """A trial escalated after an oom (or a job whose own resources a plugin
    set) gets its own memory in its JSON."""
    scheduler = make(resources={"memory": "1G"})
    await scheduler.post_init()
    config = await json_for(scheduler, resources=Resources(memory_mb=2048))
    assert spec_of(config)["computeResource"] == {"memoryMib": "2048"}


async def test_values_in_config_win_with_one_warning(caplog):
    caplog.set_level(logging.WARNING)
    scheduler = make(
        resources={"cpus": 2, "memory": "1G", "time": "1h", "gpus": 2},
        taskGroups=[{"taskSpec": {"computeResource": {"cpuMilli": "500"}, "max_run_duration": "60s"}}],
        allocationPolicy={"instances": [{"policy": {"accelerators": [{"type": "nvidia-l4", "count": "1"}]}}]},
    )
    await scheduler.post_init()
    for index in range(3):
        config = await json_for(scheduler, index)
        spec = spec_of(config)
        assert spec["computeResource"] == {"cpuMilli": "500", "memoryMib": "1024"}
        assert spec["max_run_duration"] == "60s" and "maxRunDuration" not in spec
        assert gpus_of(config) == ([{"type": "nvidia-l4", "count": "1"}], None)
    warnings = [r.getMessage() for r in caplog.records if "overrides resources" in r.getMessage()]
    assert len(warnings) == 3, warnings  # cpus, time, gpus: once each
    assert any("computeResource.cpuMilli" in w for w in warnings)
    assert any("max_run_duration" in w for w in warnings)
    assert any("accelerators[0].count" in w for w in warnings)


async def test_an_accelerator_type_in_config_gets_the_count():
    scheduler = make(
        resources={"gpus": 4},
        allocationPolicy={"instances": [{"installGpuDrivers": False,
                                         "policy": {"accelerators": [{"type": "nvidia-l4"}]}}]},
    )
    await scheduler.post_init()
    assert gpus_of(await json_for(scheduler)) == ([{"type": "nvidia-l4", "count": "4"}], False)


async def test_an_instance_template_says_the_vm_and_its_gpus():
    scheduler = make(
        resources={"gpus": 1},
        allocationPolicy={"instances": [{"instanceTemplate": "my-gpu-template"}]},
    )
    await scheduler.post_init()
    config = await json_for(scheduler)
    assert config["allocationPolicy"]["instances"] == [{"instanceTemplate": "my-gpu-template"}]


async def test_gpus_without_a_type_are_refused_by_post_init():
    scheduler = make(resources={"gpus": 1})  # never raises
    with pytest.raises(ValueError, match="gpu_type="):
        await scheduler.post_init()
    with pytest.raises(ValueError, match="gpu_type must name"):
        await make(gpu_type="").post_init()
    # a job whose own request asks for GPUs: refused at its submission
    scheduler = make()
    await scheduler.post_init()
    with pytest.raises(SubmissionError, match="Batch needs their type"):
        await json_for(scheduler, resources=Resources(gpus=1))


async def test_zero_gpus_ask_for_no_accelerator():
    scheduler = make(resources={"gpus": 0})
    await scheduler.post_init()
    assert "allocationPolicy" not in await json_for(scheduler)


@pytest.mark.parametrize(
    "event, cause",
    [
        ("Task state is updated from RUNNING to FAILED on zones/z/instances/i "
         "due to task execution exceeded the time limit with exit code 50005.", "timeout"),
        ("Task state is updated from RUNNING to FAILED with exit code 1.", ""),
        ("", ""),
    ],
)
def test_a_task_stopped_at_its_max_run_duration_ends_as_a_timeout(event, cause):
    """Batch's exit code 50005 (a task over maxRunDuration) is the cause
    ``timeout``: the retry policy then gives the next trial more time."""
    answer = make()._to_query("j", "FAILED", event, 0.0)
    assert (answer.alive, answer.cause) == (False, cause)


# ------------------------------------------------ end to end: gcloud + the fake
def submitted(env: dict, name: str) -> dict:
    return fake_api(
        env,
        f"/v1/projects/{env['CLOUDSDK_CORE_PROJECT']}/locations/"
        f"{env['CLOUDSDK_BATCH_LOCATION']}/jobs/{name}",
    )


async def test_batch_gets_the_mapped_fields_for_a_job_and_a_config_edit_wins(batch, caplog):
    """One job alone, and (after post_init, as pipen edits it) the memory set in
    the live config: Batch gets cpuMilli and maxRunDuration from resources, the
    edited memoryMib, and the GPUs asked."""
    caplog.set_level(logging.WARNING)
    xq = batch_xqute(
        batch, array=False,
        resources={"cpus": 2, "memory": "512M", "time": "10m", "gpus": 1},
        gpu_type="nvidia-tesla-t4",
    )
    scheduler = xq.scheduler
    await scheduler.post_init()
    scheduler._post_init_called = True
    scheduler.config["taskGroups"][0]["taskSpec"]["computeResource"] = {"memoryMib": "4096"}
    await xq.feed(["bash", "-c", "echo ran"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert await job.get_rc() == 0
    resource = submitted(batch, await job.get_jid())
    spec = resource["taskGroups"][0]["taskSpec"]
    assert spec["computeResource"] == {"cpuMilli": "2000", "memoryMib": "4096"}
    assert spec["maxRunDuration"] == "600s"
    instance = resource["allocationPolicy"]["instances"][0]
    assert instance["policy"]["accelerators"] == [{"type": "nvidia-tesla-t4", "count": "1"}]
    assert instance["installGpuDrivers"] is True
    warnings = [r.getMessage() for r in caplog.records if "overrides resources" in r.getMessage()]
    assert len(warnings) == 1 and "memoryMib" in warnings[0]


async def test_an_array_shares_its_members_request(batch):
    xq = batch_xqute(batch, forks=3, resources={"cpus": 1, "memory": "256M", "time": 120})
    for i in range(3):
        await xq.feed(["bash", "-c", f"echo member-{i}"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    assert [await job.get_rc() for job in xq.jobs] == [0, 0, 0]
    names = {parse_member_jid(await job.get_jid())[0] for job in xq.jobs}
    assert len(names) == 1  # one Batch job for the three
    resource = submitted(batch, names.pop())
    group = resource["taskGroups"][0]
    assert group["taskCount"] == "3"
    assert group["taskSpec"]["computeResource"] == {"cpuMilli": "1000", "memoryMib": "256"}
    assert group["taskSpec"]["maxRunDuration"] == "120s"
