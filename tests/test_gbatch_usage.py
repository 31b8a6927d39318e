"""Usage records and exit causes on Google Cloud Batch.

Batch's own figures come from the lists the status rounds make anyway (the
jobs list's ``status.runDuration`` and ``statusEvents``, an array's tasks list
with each task's events), never from a call per job; the wrapper measures
CPU. Batch's reserved exit codes name how it ended a task itself: 50005 (over
its maxRunDuration) is ``timeout``, 50001 (a Spot VM preempted) ``preempted``,
50002/50003/50004/50006 (the VM lost, rebooted, unresponsive, recreated)
``node_fail``.

The end-to-end tests run the real ``gcloud`` against the loopback Batch API
(``scripts/fake_batch_api.py``), which enforces ``maxRunDuration`` and can be
told (job labels) to lose a task's VM with a given reserved exit code.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.test_gbatch import batch, batch_xqute, fake_api, make, workdir_for  # noqa: F401 - fixture
from xqute import Xqute
from xqute.defaults import JobStatus
from xqute.resources import usage_from_wrapper
from xqute.schedulers.gbatch_scheduler import (
    RESERVED_EXIT_CAUSES,
    GbatchScheduler,
    _figures_from_task_events,
    parse_member_jid,
)

# a second of CPU, however busy the machine is
BURN_ONE_SECOND = [
    "python3", "-c",
    "import time\nstart = time.process_time()\nwhile time.process_time() - start < 1: pass",
]


def job_entry(state: str, events: list[dict], run_duration: str | None = None) -> dict:
    """A job as ``gcloud batch jobs list`` gives it, in the shape the real
    service uses."""
    status: dict = {"state": state, "statusEvents": events}
    if run_duration is not None:
        status["runDuration"] = run_duration
    return {"name": "projects/p/locations/l/jobs/j", "uid": "j-1", "status": status}


def failed_by(code: int, reason: str) -> str:
    return (
        "Job state is set from RUNNING to FAILED for job projects/p/locations/l/jobs/j. "
        "Job failed due to task failure. Specifically, task with index 0 failed due to "
        'the following task event: "Task state is updated from RUNNING to FAILED on '
        f'zones/us-central1-b/instances/2845318163766349036 due to {reason} with exit code {code}."'
    )


# ------------------------------------------------------------------ mapping
@pytest.mark.parametrize(
    "code, cause",
    [(50001, "preempted"), (50002, "node_fail"), (50003, "node_fail"), (50004, "node_fail"),
     (50005, "timeout"), (50006, "node_fail"), (1, ""), (50000, "")],
)
def test_a_failed_job_s_reserved_exit_code_is_its_cause(code, cause):
    scheduler = make()
    event = failed_by(code, "whatever Batch says")
    answer = scheduler._to_query("j", "FAILED", event, 0.0)
    assert (answer.alive, answer.cause) == (False, cause)
    assert RESERVED_EXIT_CAUSES.get(code, "") == cause


def test_figures_of_a_job_come_from_its_run_duration_and_its_failure_event():
    scheduler = make()
    found = {
        "j": {
            "uid": "", "state": "FAILED", "event": failed_by(50001, "Spot VM preemption"),
            "events": [], "run_duration": "12.5s",
        }
    }
    scheduler._batch_jobs.update(found)
    figures = scheduler._figures("j")
    assert figures == {
        "wall_s": 12.5, "host": "2845318163766349036",
        "sources": {"wall_s": "batch_run_duration", "host": "batch_events"},
    }
    assert scheduler._batch_cause("j") == "preempted"
    # a job Batch still runs has no figures yet (its trial is asked again later)
    scheduler._batch_jobs["j"] = dict(found["j"], state="RUNNING")
    assert scheduler._figures("j") is None and scheduler._batch_cause("j") == ""


def test_figures_without_a_run_duration_come_from_the_events():
    from xqute.schedulers.gbatch_scheduler import _jobs_from_list

    listed = _jobs_from_list([job_entry("SUCCEEDED", [
        {"type": "STATUS_CHANGED", "eventTime": "2026-01-01T00:00:01.5Z",
         "description": "Job state is set from SCHEDULED to RUNNING for job j"},
        {"type": "STATUS_CHANGED", "eventTime": "2026-01-01T00:00:11.250000001Z",
         "description": "Job state is set from RUNNING to SUCCEEDED for job j"},
    ])])
    scheduler = make()
    scheduler._batch_jobs.update(listed)
    assert scheduler._figures("j") == {"wall_s": 9.75, "sources": {"wall_s": "batch_events"}}


def test_a_member_s_figures_and_cause_come_from_its_task_events():
    events = [
        {"type": "STATUS_CHANGED", "taskState": "RUNNING", "eventTime": "2026-01-01T00:00:00Z",
         "description": "Task state is updated from ASSIGNED to RUNNING on "
                        "zones/us-central1-a/instances/vm-7."},
        {"type": "STATUS_CHANGED", "taskState": "FAILED", "eventTime": "2026-01-01T00:01:00Z",
         "taskExecution": {"exitCode": 50005},
         "description": "Task state is updated from RUNNING to FAILED on "
                        "zones/us-central1-a/instances/vm-7 due to the time limit with exit code 50005."},
    ]
    assert _figures_from_task_events(events) == {
        "wall_s": 60.0, "host": "vm-7", "exit_code": 50005,
        "sources": {"wall_s": "batch_events", "host": "batch_events"},
    }
    scheduler = make()
    scheduler._batch_tasks[("arr", 3)] = {"state": "FAILED", "events": events}
    assert scheduler._batch_cause("arr:3") == "timeout"
    assert scheduler._task_query("arr", 3, "FAILED").cause == "timeout"
    assert scheduler._figures("arr:3")["wall_s"] == 60.0
    assert scheduler._batch_cause("arr:4") == ""


async def test_jobs_stopped_by_a_signal_ask_batch_once_a_round(monkeypatch):
    """rc 143 may be Batch stopping the task at its maxRunDuration: Batch's
    list is asked again, but once for all the jobs of the round."""
    scheduler = make()
    await scheduler.post_init()
    calls = []

    async def list_jobs():
        calls.append(1)
        found = {
            f"j{i}": {"uid": "", "state": "FAILED", "event": failed_by(50005, "the time limit"),
                      "events": [], "run_duration": "3s"}
            for i in range(2)
        }
        scheduler._batch_jobs.update(found)
        return found

    monkeypatch.setattr(scheduler, "_list_jobs", list_jobs)
    jobs = []
    for i in range(2):
        job = scheduler.job_class(i, ["true"], scheduler.workdir)
        job._jid = f"j{i}"
        jobs.append(job)
    scheduler._in_round, scheduler._round_refreshed = True, False
    assert [await scheduler.exit_cause(job, 143) for job in jobs] == ["timeout", "timeout"]
    assert len(calls) == 1
    # the wrapper's own return codes are not put to Batch
    scheduler._batch_jobs.clear()
    scheduler._round_refreshed = False
    assert await scheduler.exit_cause(jobs[0], 1) == "failed"
    assert await scheduler.exit_cause(jobs[0], 0) == "ok"
    assert len(calls) == 1


async def test_a_round_asks_batch_once_for_states_and_usage(monkeypatch):
    """The live jobs' states and the ended trials' figures come from one jobs
    list, and one tasks list per array job, in a status round."""
    scheduler = make()
    await scheduler.post_init()
    calls = {"jobs": 0, "tasks": 0}
    member_events = [
        {"taskState": "RUNNING", "eventTime": "2026-01-01T00:00:00Z", "description": "to RUNNING"},
        {"taskState": "SUCCEEDED", "eventTime": "2026-01-01T00:00:02Z", "description": "done"},
    ]

    async def list_jobs():
        calls["jobs"] += 1
        found = {
            "live": {"uid": "", "state": "RUNNING", "event": "", "events": [], "run_duration": "1s"},
            "done": {"uid": "", "state": "SUCCEEDED", "event": "", "events": [], "run_duration": "4s"},
            "arr": {"uid": "", "state": "RUNNING", "event": "", "events": [], "run_duration": "9s"},
        }
        scheduler._batch_jobs.update(found)
        return found

    async def list_tasks(name):
        calls["tasks"] += 1
        scheduler._batch_tasks[(name, 0)] = {"state": "SUCCEEDED", "events": member_events}
        scheduler._batch_tasks[(name, 1)] = {"state": "RUNNING", "events": member_events[:1]}
        return {0: "SUCCEEDED", 1: "RUNNING"}, False

    monkeypatch.setattr(scheduler, "_list_jobs", list_jobs)
    monkeypatch.setattr(scheduler, "_list_tasks_now", list_tasks)
    live = scheduler.job_class(0, ["true"], scheduler.workdir)
    live._jid = "live"
    member = scheduler.job_class(1, ["true"], scheduler.workdir)
    member._jid = "arr:1"
    scheduler._in_round = True
    answers, usage = await scheduler.query_jobs_and_usage([live, member], ["done", "arr:0", "gone"])
    assert calls == {"jobs": 1, "tasks": 1}
    assert answers[live].state == answers[member].state == "running"
    assert usage == {
        "done": {"wall_s": 4.0, "sources": {"wall_s": "batch_run_duration"}},
        "arr:0": {"wall_s": 2.0, "sources": {"wall_s": "batch_events"}},
    }
    # outside a round (the run's end): a list of its own
    scheduler._in_round = False
    await scheduler.query_usage(["done"])
    assert calls["jobs"] == 2


def test_batch_enforces_resources_time_not_the_wrapper():
    scheduler = make(resources={"time": 60})
    job = scheduler.job_class(0, ["sleep", "1"], scheduler.workdir)
    job.resources = scheduler.resources
    assert GbatchScheduler.time_enforced_by_scheduler
    assert scheduler.time_limit(job) == 0
    assert "timeout 60" not in scheduler.wrap_job_script(job)


# ------------------------------------------------ end to end: gcloud + the fake
def submitted(env: dict, name: str) -> dict:
    return fake_api(
        env,
        f"/v1/projects/{env['CLOUDSDK_CORE_PROJECT']}/locations/"
        f"{env['CLOUDSDK_BATCH_LOCATION']}/jobs/{name}",
    )


async def wrapper_figures(path) -> dict:
    return usage_from_wrapper(await path.a_read_text())


async def test_usage_of_a_job_burning_a_second_of_cpu(batch):
    xq = batch_xqute(batch, array=False, usage="wait")
    await xq.feed(BURN_ONE_SECOND)
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert await job.get_rc() == 0
    record = json.loads(await job.usage_file.a_read_text())
    assert record["cause"] == "ok" and record["rc"] == 0
    assert record["cpu_s"] >= 0.9 and record["sources"]["cpu_s"] == "wrapper", record
    # the wall time is Batch's: the job's time RUNNING, which holds the wrapper's
    assert record["sources"]["wall_s"] == "batch_run_duration", record
    wrapper = await wrapper_figures(job.metadir / "job.usage.raw")
    assert wrapper["wall_s"] is not None and record["wall_s"] >= wrapper["wall_s"], (record, wrapper)
    assert record["wall_s"] >= record["cpu_s"] * 0.9
    assert record["host"] == wrapper["host"]  # no VM named on success: the wrapper's


async def test_usage_of_array_members_comes_from_their_task_events(batch):
    xq = batch_xqute(batch, forks=2, usage="wait")
    for _ in range(2):
        await xq.feed(BURN_ONE_SECOND)
    await asyncio.wait_for(xq.run_until_complete(), 300)
    assert [await job.get_rc() for job in xq.jobs] == [0, 0]
    assert len({parse_member_jid(await job.get_jid())[0] for job in xq.jobs}) == 1
    for job in xq.jobs:
        record = json.loads(await job.usage_file.a_read_text())
        assert record["cpu_s"] >= 0.9, record
        assert record["sources"]["wall_s"] == "batch_events", record
        assert record["sources"]["host"] == "batch_events", record
        wrapper = await wrapper_figures(job.metadir / "job.usage.raw")
        # the task's RUNNING-to-end span holds the wrapper's own
        assert record["wall_s"] >= wrapper["wall_s"], (record, wrapper)
        # the VM the task events name is the machine the wrapper ran on
        assert record["host"] == wrapper["host"]


async def test_a_job_over_its_time_is_stopped_by_batch_and_retried_with_more(batch):
    """resources' time is Batch's maxRunDuration: Batch stops the task
    (exit code 50005), the trial's cause is timeout, and the retry asks for
    1.5 times the time, in the JSON Batch gets."""
    xq = Xqute(
        "gbatch", workdir=workdir_for(batch), error_strategy="retry", num_retries=1,
        scheduler_opts={
            "project": batch["CLOUDSDK_CORE_PROJECT"],
            "location": batch["CLOUDSDK_BATCH_LOCATION"],
            "poll_interval": 0.5, "query_interval": 1, "end_grace": 1,
            "array": False, "resources": {"time": 2},
        },
    )
    await xq.feed(["sleep", "60"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert job.trial_count == 1
    first = json.loads(await (job.retry_dir / "0" / "job.usage").a_read_text())
    last = json.loads(await job.usage_file.a_read_text())
    assert first["cause"] == "timeout" and first["requested"]["time"] == 2, first
    assert last["cause"] == "timeout" and last["requested"]["time"] == 3, last
    # Batch ran each trial at least its maxRunDuration before it stopped it
    assert first["wall_s"] >= 2 and last["wall_s"] >= 3, (first, last)
    resource = submitted(batch, await job.get_jid())
    assert resource["taskGroups"][0]["taskSpec"]["maxRunDuration"] == "3s"
    assert "exit code 50005" in resource["status"]["statusEvents"][-1]["description"]
    # the wrapper was stopped by Batch, not by a timeout of its own
    wrapper = await (job.metadir / xq.scheduler.wrapped_script_name).a_read_text()
    assert "timeout 3" not in wrapper and re.search(r'eval "(exec )?\$cmd" &', wrapper)


@pytest.mark.parametrize("code, cause", [(50001, "preempted"), (50002, "node_fail")])
async def test_a_lost_vm_is_the_cause_batch_names(batch, code, cause):
    xq = batch_xqute(
        batch, array=False,
        labels={"fake-batch-vm-lost-after": "1", "fake-batch-vm-lost-code": str(code)},
    )
    await xq.feed(["sleep", "60"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    record = json.loads(await job.usage_file.a_read_text())
    assert record["cause"] == cause, record
    assert record["rc"] == -3  # the wrapper never recorded an end: its VM was gone
    assert record["sources"]["host"] == "batch_events" and record["host"], record
    assert record["wall_s"] >= 1, record
    stderr = await job.stderr_file.a_read_text()
    assert f"exit code {code}" in stderr


def retrying_xqute(env: dict, **options) -> Xqute:
    return Xqute(
        "gbatch", workdir=workdir_for(env), error_strategy="retry", num_retries=1, forks=4,
        scheduler_opts={
            "project": env["CLOUDSDK_CORE_PROJECT"],
            "location": env["CLOUDSDK_BATCH_LOCATION"],
            "poll_interval": 0.5, "query_interval": 1, "end_grace": 1,
            **options,
        },
    )


async def test_an_array_member_over_its_time_is_a_timeout_by_its_task_s_exit_code(batch):
    """Two members of one array job: the one Batch stops at maxRunDuration is
    a timeout (its task's exit code 50005), the other ends ok; each record's
    wall time is its own task's (it holds that member's wrapper's)."""
    xq = batch_xqute(batch, forks=2, resources={"time": 2}, usage="wait")
    await xq.feed(["sleep", "60"])
    await xq.feed(["true"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    slow, quick = xq.jobs
    assert parse_member_jid(await slow.get_jid())[0] == parse_member_jid(await quick.get_jid())[0]
    slow_record = json.loads(await slow.usage_file.a_read_text())
    quick_record = json.loads(await quick.usage_file.a_read_text())
    assert slow_record["cause"] == "timeout", slow_record
    assert quick_record["cause"] == "ok", quick_record
    assert slow_record["sources"]["wall_s"] == "batch_events" and slow_record["wall_s"] >= 2
    assert quick_record["sources"]["wall_s"] == "batch_events"
    # each record has its own task's span, which holds its own wrapper's run
    for job, record in ((slow, slow_record), (quick, quick_record)):
        wrapper = await wrapper_figures(job.metadir / "job.usage.raw")
        assert record["wall_s"] >= wrapper["wall_s"], (record, wrapper)


async def test_a_node_failure_is_retried_with_the_same_request(batch):
    """node_fail (50002, the VM stopped reporting): the retry policy keeps the
    next trial off that host, which Batch has no field for (each trial gets
    VMs of its own): the next trial's JSON asks for the same."""
    xq = retrying_xqute(
        batch, array=False, resources={"cpus": 1},
        labels={"fake-batch-vm-lost-after": "1", "fake-batch-vm-lost-code": "50002"},
    )
    await xq.feed(["sleep", "60"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert job.trial_count == 1
    first = json.loads(await (job.retry_dir / "0" / "job.usage").a_read_text())
    last = json.loads(await job.usage_file.a_read_text())
    assert first["cause"] == last["cause"] == "node_fail", (first, last)
    assert last["requested"]["exclude_nodes"] == [first["host"]], last
    spec = submitted(batch, await job.get_jid())["taskGroups"][0]["taskSpec"]
    assert spec["computeResource"] == {"cpuMilli": "1000"}


async def _job_whose_wrapper_was_signalled(monkeypatch, end_grace):
    """A queued job "j" whose files say rc 143; ``ended`` collects the
    (rc, cause) of each end the scheduler records."""
    scheduler = make(end_grace=end_grace)
    await scheduler.post_init()
    job = scheduler.job_class(0, ["sleep", "9"], scheduler.workdir)
    job._jid = "j"
    await scheduler.queue_job(job)
    ended = []

    async def read_rc(self):
        return 143

    async def mark_ended(job, rc, reason="", write=False, cause=""):
        ended.append((rc, cause or await scheduler.exit_cause(job, rc)))

    monkeypatch.setattr(type(job), "read_rc_file", read_rc)
    monkeypatch.setattr(scheduler, "_mark_ended", mark_ended)
    return scheduler, job, ended


async def test_a_signalled_end_waits_for_batch_to_say_how_it_ended(monkeypatch):
    """rc 143 in the files while Batch's list still shows the job RUNNING (the
    real service's list lags): the job stays open up to end_grace, and once
    the list shows Batch's exit code 50005 it ends as a timeout."""
    scheduler, job, ended = await _job_whose_wrapper_was_signalled(monkeypatch, end_grace=60)

    async def list_jobs():
        scheduler._batch_jobs["j"] = {
            "uid": "", "state": "FAILED", "event": failed_by(50005, "the time limit"),
            "events": [], "run_duration": "9s",
        }
        return dict(scheduler._batch_jobs)

    monkeypatch.setattr(scheduler, "_list_jobs", list_jobs)
    scheduler._batch_jobs["j"] = {"uid": "", "state": "RUNNING", "event": "", "events": []}
    scheduler._in_round = True
    # a round: the files say FAILED, Batch (last asked) says RUNNING: not yet
    assert await scheduler._end_from_files(job, JobStatus.FAILED) is False and not ended
    # the round's query: Batch's list shows the end
    await scheduler._jobs_listed()
    assert await scheduler._end_from_files(job, JobStatus.FAILED) is True
    assert ended == [(143, "timeout")]
    # outside the rounds (or when Batch said it ended) the files are taken at once
    scheduler._batch_jobs["j"] = {"uid": "", "state": "RUNNING", "event": "", "events": []}
    scheduler._in_round = False
    assert await scheduler._end_from_files(job, JobStatus.FAILED) is True


async def test_a_signalled_end_batch_never_explains_ends_after_end_grace(monkeypatch):
    scheduler, job, ended = await _job_whose_wrapper_was_signalled(monkeypatch, end_grace=0)
    scheduler._batch_jobs["j"] = {"uid": "", "state": "RUNNING", "event": "", "events": []}
    scheduler._in_round = True
    assert await scheduler._end_from_files(job, JobStatus.FAILED) is True and [rc for rc, _ in ended] == [143]
