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


def _lagging_accounting_scheduler():
    """The local scheduler with an accounting (as Slurm's sacct, Grid Engine's
    qacct) that has a job's figures only from the second time it is asked,
    as sacct lags a job's end."""
    from xqute.schedulers.local_scheduler import LocalScheduler

    class LocalWithLaggingAccounting(LocalScheduler):
        usage_from_scheduler = True
        asked: list[list[str]] = []

        async def query_usage(self, jids):
            self.asked.append(sorted(jids))
            if len(self.asked) < 2:
                return {}
            return {
                jid: {"peak_memory_mb": 42.0, "host": "accounted", "sources": {"peak_memory_mb": "accounting"}}
                for jid in jids
            }

    return LocalWithLaggingAccounting


async def _run_one_ok_and_one_retried(workdir, scheduler_class, usage):
    xq = Xqute(scheduler_class, workdir=workdir, forks=3, error_strategy="retry", num_retries=1,
               scheduler_opts={"usage": usage})
    ok = await xq.feed(["true"])
    flaky = await xq.feed(["bash", "-c", '[ -e "$0.once" ] || { touch "$0.once"; exit 4; }', str(workdir / "flag")])
    await xq.run_until_complete()
    assert await flaky.get_rc() == 0 and flaky.trial_count == 1
    return ok, flaky


async def _assert_accounted(ok, flaky):
    for record in (await ok.get_usage(), await flaky.get_usage()):
        assert record["peak_memory_mb"] == 42.0 and record["host"] == "accounted"
        assert record["sources"]["peak_memory_mb"] == "accounting"
        assert record["sources"]["wall_s"] == "wrapper"  # the wrapper's figures stay
        assert "pending" not in record
    first = json.loads((flaky.metadir / "job.retry" / "0" / "job.usage").read_text())
    assert first["rc"] == 4 and first["cause"] == "failed" and first["peak_memory_mb"] == 42.0
    assert "pending" not in first


async def test_usage_wait_merges_lagging_figures_at_the_run_end_in_one_call(workdir):
    """``usage="wait"``: every trial's record gets the accounting's figures at
    the run's end, retried ones in job.retry/<n>/, and the ended jobs are
    asked about together, never one call per job."""
    scheduler_class = _lagging_accounting_scheduler()
    ok, flaky = await _run_one_ok_and_one_retried(workdir, scheduler_class, "wait")
    calls = scheduler_class.asked
    assert len(calls) == 2 and calls[0] == calls[1] and len(calls[0]) == 3  # 2 jobs, 3 trials
    await _assert_accounted(ok, flaky)
    assert ok.usage["peak_memory_mb"] == 42.0  # the in-memory record too


async def test_by_default_the_run_end_makes_no_usage_call_and_a_later_fetch_completes(workdir):
    """``usage=True`` (the default): the run makes no accounting call of its
    own at the end (the rounds' calls carry usage), so records the rounds did
    not complete stay ``pending`` with their jid; ``complete_usage`` from a
    later process completes them all in one call."""
    scheduler_class = _lagging_accounting_scheduler()
    ok, flaky = await _run_one_ok_and_one_retried(workdir, scheduler_class, True)
    assert scheduler_class.asked == []  # the trials ended between rounds
    record = await ok.get_usage()
    assert record["pending"] is True and record["jid"] == str(ok.jid) and record.get("peak_memory_mb") != 42.0

    later = scheduler_class(workdir=workdir, forks=1)
    assert await later.complete_usage([0, 1]) == 0  # accounting has nothing yet: records unchanged
    assert (await ok.get_usage())["pending"] is True
    assert await later.complete_usage([0, 1]) == 3
    assert len(scheduler_class.asked) == 2 and len(scheduler_class.asked[1]) == 3
    await _assert_accounted(ok, flaky)
    assert await later.complete_usage([0, 1]) == 0 and len(scheduler_class.asked) == 2  # nothing left


async def test_a_bad_usage_value_is_refused(workdir):
    import pytest

    with pytest.raises(ValueError, match='usage must be True, False or "wait"'):
        Xqute("local", workdir=workdir, scheduler_opts={"usage": "yes"})


async def test_usage_false_keeps_no_record(workdir):
    xq = Xqute("local", workdir=workdir, scheduler_opts={"usage": False})
    job = await xq.feed(["true"])
    await xq.run_until_complete()
    assert await job.get_rc() == 0
    assert not (job.metadir / "job.usage").exists() and not (job.metadir / "job.usage.raw").exists()
    assert job.usage is None and await job.get_usage() is None
