"""Usage records (job.usage) and retries that escalate, on the local scheduler."""

from __future__ import annotations

import json

from xqute import JobStatus, Xqute

BURN_ONE_SECOND = ["python3", "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass"]


async def test_a_job_records_what_it_used(workdir):
    xq = Xqute("local", workdir=workdir, scheduler_opts={"resources": {"cpus": 1, "time": "1h"}})
    job = await xq.feed(BURN_ONE_SECOND)
    failing = await xq.feed(["bash", "-c", "exit 3"])
    await xq.run_until_complete()
    usage = await job.get_usage()
    assert usage["cause"] == "ok" and usage["rc"] == 0 and usage["trial"] == 0
    assert usage["cpu_s"] >= 0.9
    assert usage["wall_s"] >= usage["cpu_s"] * 0.9
    assert usage["host"]
    assert usage["requested"] == {"cpus": 1, "time": 3600}
    assert usage["sources"]["cpu_s"] == "wrapper" and usage["sources"]["wall_s"] == "wrapper"
    assert (await failing.get_usage())["cause"] == "failed"


async def test_a_timed_out_job_is_retried_with_more_time_and_each_trial_keeps_its_record(workdir):
    xq = Xqute(
        "local", workdir=workdir, error_strategy="retry", num_retries=2,
        scheduler_opts={"resources": {"time": 1}},
    )
    job = await xq.feed(["sleep", "1.4"])
    await xq.run_until_complete()
    assert await job.get_rc() == 0 and job.trial_count == 1
    first = json.loads((job.metadir / "job.retry" / "0" / "job.usage").read_text())
    assert first["cause"] == "timeout" and first["rc"] == 124 and first["requested"]["time"] == 1
    second = await job.get_usage()
    assert second["cause"] == "ok" and second["requested"]["time"] == 2  # 1 s x 1.5, rounded up


async def test_escalation_stops_at_resource_limits_with_a_message(workdir):
    xq = Xqute(
        "local", workdir=workdir, error_strategy="retry", num_retries=3,
        scheduler_opts={"resources": {"time": 1}, "resource_limits": {"time": 2}},
    )
    job = await xq.feed(["sleep", "5"])
    await xq.run_until_complete()
    # trial 0 (1 s), trial 1 (2 s), then 3 s would pass the limit: no third trial
    assert job.status == JobStatus.FAILED and job.trial_count == 1
    assert "would ask for time_s 3 is over the limit 2" in job.stderr_file.read_text()


async def test_a_retry_policy_without_escalation_retries_as_before(workdir):
    xq = Xqute(
        "local", workdir=workdir, error_strategy="retry", num_retries=1,
        scheduler_opts={"resources": {"time": 1}, "retry_policy": {"timeout": None}},
    )
    job = await xq.feed(["sleep", "5"])
    await xq.run_until_complete()
    assert job.trial_count == 1 and (await job.get_usage())["requested"]["time"] == 1


async def test_a_job_killed_by_the_manager_says_so(workdir):
    xq = Xqute("local", workdir=workdir)
    job = await xq.feed(["sleep", "60"])
    await xq.run_until_complete(keep_feeding=True)
    while job.status != JobStatus.RUNNING:
        import asyncio

        await asyncio.sleep(0.05)
    xq.cancel()
    await xq.stop_feeding()
    assert (await job.get_usage())["cause"] == "killed"
