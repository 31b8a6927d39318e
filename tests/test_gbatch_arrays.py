"""Google Cloud Batch arrays: a burst of jobs goes to Batch as ONE job whose
task group has a task per job (``taskCount``), at most ``parallelism`` (the
throttle: the free forks) running at once; task ``i`` runs member ``i``'s own
wrapper through a dispatch script in ``<workdir>/.arrays/<name>/``. A member's
job id is ``<Batch job name>:<task index>``.

The first tests drive the scheduler with a stand-in for ``gcloud`` (its answers
parsed, its calls counted). The others go end to end through the real ``gcloud``
CLI to the loopback Batch API (``scripts/fake_batch_api.py``, started by
``bash scripts/gbatch.sh start``), which runs every task on this machine with
the ``gs://`` workdir mounted from the GCS emulator: skipped with the reason
when it is down, failed under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.realparts import ROOT, part_env, require
from xqute import JobStatus, Xqute
from xqute.schedulers import gbatch_scheduler
from xqute.schedulers.gbatch_scheduler import (
    DEFAULT_ARRAY_LIMIT,
    JOB_NAME_RE,
    GbatchScheduler,
    member_jid,
    parse_member_jid,
)
from xqute.utils import CommandResult

OPTS = {"project": "xqute-test", "location": "us-central1"}


def make(workdir="gs://bucket/run/wd", **options) -> GbatchScheduler:
    return GbatchScheduler(workdir, **{**OPTS, **options})


def jobs_of(scheduler: GbatchScheduler, count: int, first: int = 0) -> list:
    return [scheduler.job_class(i, ["true"], scheduler.workdir) for i in range(first, first + count)]


class FakeGcloud:
    """Stands in for ``run_command``: records each gcloud call's arguments and
    answers from ``replies`` by verb (``"jobs list"``, ``"tasks list"``, ...)."""

    def __init__(self, monkeypatch, **replies: CommandResult) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.replies = {verb.replace("_", " "): reply for verb, reply in replies.items()}
        monkeypatch.setattr(gbatch_scheduler, "run_command", self)

    async def __call__(self, *args: str, **_kwargs) -> CommandResult:
        self.calls.append(args[1:])
        verb = f"{args[2]} {args[3]}"
        return self.replies.get(verb, CommandResult(0, "[]", ""))

    def verbs(self) -> list[str]:
        return [f"{call[1]} {call[2]}" for call in self.calls]


def listed(*jobs: tuple[str, str]) -> CommandResult:
    """A ``gcloud batch jobs list`` answer: (name, state) pairs."""
    return CommandResult(
        0,
        json.dumps(
            [
                {"name": f"projects/p/locations/l/jobs/{name}", "status": {"state": state}}
                for name, state in jobs
            ]
        ),
        "",
    )


def tasks(name: str, *states: str) -> CommandResult:
    """A ``gcloud batch tasks list`` answer: task i in ``states[i]``."""
    return CommandResult(
        0,
        json.dumps(
            [
                {
                    "name": f"projects/p/locations/l/jobs/{name}/taskGroups/group0/tasks/{i}",
                    "status": {"state": state},
                }
                for i, state in enumerate(states)
            ]
        ),
        "",
    )


# ------------------------------------------------------------- names and ids
def test_member_jids_name_the_batch_job_and_the_task():
    assert member_jid("gbatch-1a2b3c4d-0-a0f0f0f", 7) == "gbatch-1a2b3c4d-0-a0f0f0f:7"
    assert parse_member_jid("gbatch-1a2b3c4d-0-a0f0f0f:7") == ("gbatch-1a2b3c4d-0-a0f0f0f", 7)
    # a job submitted alone has the bare Batch job name (never a ":" in it)
    assert parse_member_jid("gbatch-1a2b3c4d-3") is None
    assert parse_member_jid("odd:name:x") is None


@pytest.mark.parametrize("prefix", ["Has_Underscore", "9starts-with-digit", "x" * 80, "处理"])
def test_array_batch_names_are_batch_ids_unique_per_member_set(prefix):
    scheduler = make(jobname_prefix=prefix)
    jobs = jobs_of(scheduler, 4)
    name = scheduler.array_batch_name(jobs)
    assert JOB_NAME_RE.match(name), name
    assert name != scheduler.array_batch_name(jobs[:3])  # other members
    assert name not in {scheduler.batch_job_name(job) for job in jobs}
    jobs[1].trial_count = 1  # a retried member: another array
    assert scheduler.array_batch_name(jobs) != name


async def test_max_array_size_is_the_array_limit_option():
    assert await make().max_array_size() == DEFAULT_ARRAY_LIMIT == 10_000
    assert await make(array_limit=3).max_array_size() == 3
    for bad in (0, 100_001, 2.5, True):
        with pytest.raises(ValueError, match="array_limit"):
            await make(array_limit=bad).post_init()
    assert make().arrays_enabled and not make(array=False).arrays_enabled


# ----------------------------------------------- queries through a stand-in
async def test_members_of_a_running_array_are_answered_by_one_tasks_list(monkeypatch):
    scheduler = make()
    plain, *members = jobs_of(scheduler, 8)
    plain._jid = "gbatch-plain-0"
    for task, job in enumerate(members[:6]):
        job._jid = member_jid("arr-running", task)
    members[6]._jid = member_jid("arr-queued", 0)
    gcloud = FakeGcloud(
        monkeypatch,
        jobs_list=listed(("gbatch-plain-0", "RUNNING"), ("arr-running", "RUNNING"), ("arr-queued", "QUEUED")),
        tasks_list=tasks("arr-running", "PENDING", "ASSIGNED", "RUNNING", "SUCCEEDED", "FAILED", "UNEXECUTED"),
    )
    answers = await scheduler.query_jobs([plain, *members])
    # one jobs list for all, one tasks list for the RUNNING array job only
    assert gcloud.verbs() == ["jobs list", "tasks list"]
    assert gcloud.calls[1][:5] == ("batch", "tasks", "list", "--job", "arr-running")
    assert scheduler.status_calls == 2
    assert answers[plain].state == "running"
    got = [answers[job].state for job in members]
    assert got == ["pending", "pending", "running", "ended", "ended", "ended", "pending"]
    assert "Task 3 of Batch job arr-running SUCCEEDED but its wrapper recorded no return code" in (
        answers[members[3]].reason
    )
    assert "Task 4 of Batch job arr-running ended in state FAILED" in answers[members[4]].reason
    assert "never run (UNEXECUTED)" in answers[members[5]].reason


async def test_an_ended_or_missing_array_job_answers_for_its_members_without_tasks_lists(monkeypatch):
    scheduler = make()
    done, failed, gone, fresh = jobs_of(scheduler, 4)
    done._jid, failed._jid = member_jid("arr-done", 0), member_jid("arr-failed", 2)
    gone._jid, fresh._jid = member_jid("arr-gone", 0), member_jid("arr-fresh", 1)
    scheduler._remember_submitted("arr-fresh", "u-1")  # just submitted: the list may lag
    gcloud = FakeGcloud(monkeypatch, jobs_list=listed(("arr-done", "SUCCEEDED"), ("arr-failed", "FAILED")))
    answers = await scheduler.query_jobs([done, failed, gone, fresh])
    assert gcloud.verbs() == ["jobs list"]
    assert answers[done].state == answers[failed].state == answers[gone].state == "ended"
    assert "Batch job arr-done (task 0) SUCCEEDED" in answers[done].reason
    assert "Batch job arr-failed (task 2) ended in state FAILED" in answers[failed].reason
    assert "Batch job arr-gone is gone" in answers[gone].reason
    assert fresh not in answers  # no answer within LIST_LAG


async def test_a_failed_tasks_list_leaves_the_members_unknown(monkeypatch):
    scheduler = make()
    (job,) = jobs_of(scheduler, 1)
    job._jid = member_jid("arr", 0)
    FakeGcloud(
        monkeypatch,
        jobs_list=listed(("arr", "RUNNING")),
        tasks_list=CommandResult(1, "", "ERROR: (gcloud.batch.tasks.list) UNAVAILABLE"),
    )
    assert await scheduler.query_jobs([job]) == {}  # asked again later, not ended


@pytest.mark.parametrize(
    "output",
    ["", "not json", "{}", "[1]", '[{"name": 3}]', '[{"name": "x/tasks/one"}]',
     '[{"name": "x/tasks/0", "status": []}]', "[" * 5000 + "]" * 5000],
)
async def test_a_tasks_list_that_is_not_a_list_of_tasks_leaves_the_members_unknown(monkeypatch, output):
    scheduler = make()
    (job,) = jobs_of(scheduler, 1)
    job._jid = member_jid("arr", 0)
    FakeGcloud(monkeypatch, jobs_list=listed(("arr", "RUNNING")), tasks_list=CommandResult(0, output, ""))
    answers = await scheduler.query_jobs([job])
    # "" is an empty list: Batch has no task 0 (ended); the rest say nothing
    assert answers == ({job: answers[job]} if output == "" else {})
    if output == "":
        assert answers[job].state == "ended" and "has no task 0" in answers[job].reason


async def test_an_array_never_started_is_given_up_for_all_members_and_cancelled_once(monkeypatch):
    scheduler = make(start_timeout=5)
    jobs = jobs_of(scheduler, 3)
    for task, job in enumerate(jobs):
        job._jid = member_jid("arr", task)
    scheduler._remember_array("arr", jobs)
    scheduler._remember_submitted("arr", "")
    scheduler._submitted_at["arr"] -= 6
    gcloud = FakeGcloud(monkeypatch, jobs_list=listed(("arr", "QUEUED")))
    answers = await scheduler.query_jobs(jobs)
    assert {answer.state for answer in answers.values()} == {"error"}
    assert "did not start within 5 s (still QUEUED" in answers[jobs[1]].reason
    # the base class kills each member as it ends it: one cancel for them all
    for job in jobs:
        await scheduler.kill_jobs([job])
    assert gcloud.verbs() == ["jobs list", "jobs cancel"]
    assert gcloud.calls[1][3] == "arr"


# ------------------------------------------------- kills through a stand-in
@pytest.fixture
def markers(monkeypatch) -> dict:
    """The files the scheduler writes (kill markers), instead of the bucket."""
    written: dict = {}

    async def write(path, text):
        written[str(path)] = text

    monkeypatch.setattr(gbatch_scheduler, "write_meta", write)
    return written


async def test_killing_every_live_member_cancels_the_array_job_once(monkeypatch, markers):
    scheduler = make()
    jobs = jobs_of(scheduler, 4)
    for task, job in enumerate(jobs):
        job._jid = member_jid("arr", task)
    scheduler._remember_array("arr", jobs)
    jobs[3]._status = JobStatus.FINISHED  # ended already
    gcloud = FakeGcloud(monkeypatch)
    await scheduler.kill_jobs(jobs[:3])
    assert gcloud.verbs() == ["jobs cancel"] and gcloud.calls[0][3] == "arr"
    await scheduler.kill_jobs(jobs[:1])  # cancelled already: nothing more to do
    assert len(gcloud.calls) == 1 and not markers


async def test_killing_a_member_while_others_live_leaves_the_job_and_marks_its_task(monkeypatch, markers):
    scheduler = make()
    jobs = jobs_of(scheduler, 3)
    for task, job in enumerate(jobs):
        job._jid = member_jid("arr", task)
        job._status = JobStatus.RUNNING
    scheduler._remember_array("arr", jobs)
    gcloud = FakeGcloud(monkeypatch)
    await scheduler.kill_jobs([jobs[1]])
    assert gcloud.calls == []  # Batch cannot stop one task: the job is left alone
    assert markers == {"gs://bucket/run/wd/.arrays/arr/killed.1": "killed by xqute\n"}
    # the others go later: then the job is cancelled (task 1 with them, if it runs)
    jobs[1]._status = JobStatus.FAILED
    await scheduler.kill_jobs([jobs[0], jobs[2]])
    assert gcloud.verbs() == ["jobs cancel"]


@pytest.mark.parametrize(
    "states, cancelled",
    [
        (("RUNNING", "RUNNING", "SUCCEEDED"), True),  # 0 and 1 killed, 2 ended
        (("RUNNING", "RUNNING", "PENDING"), False),  # task 2 still to run
        (None, False),  # Batch cannot be asked: the others are spared
    ],
)
async def test_a_kill_from_another_process_asks_batch_which_tasks_live(monkeypatch, markers, states, cancelled):
    """``xqute kill`` knows only the jobs it is told of: the tasks list says
    whether the array holds others that live."""
    scheduler = make()
    jobs = jobs_of(scheduler, 2)
    for task, job in enumerate(jobs):
        job._jid = member_jid("arr", task)
    reply = tasks("arr", *states) if states else CommandResult(1, "", "ERROR: UNAVAILABLE")
    gcloud = FakeGcloud(monkeypatch, tasks_list=reply)
    await scheduler.kill_jobs(jobs)
    assert gcloud.verbs() == (["tasks list", "jobs cancel"] if cancelled else ["tasks list"])
    assert bool(markers) is not cancelled


async def test_find_submitted_array_describes_the_array_name(monkeypatch):
    scheduler = make()
    jobs = jobs_of(scheduler, 3, first=5)
    name = scheduler.array_batch_name(jobs)
    resource = {"uid": "u-9", "status": {"state": "RUNNING"}, "labels": {"xqute-run": scheduler.run_label}}
    gcloud = FakeGcloud(monkeypatch, jobs_describe=CommandResult(0, json.dumps(resource), ""))
    assert await scheduler.find_submitted_array(jobs, False) == [f"{name}:0", f"{name}:1", f"{name}:2"]
    assert [call[:4] for call in gcloud.calls] == [("batch", "jobs", "describe", name)]
    assert scheduler._uids[name] == "u-9"
    gcloud.replies["jobs describe"] = CommandResult(1, "", f"ERROR: NOT_FOUND: {name}")
    assert await scheduler.find_submitted_array(jobs, False) is None


# ------------------------------------------------ end to end: gcloud + the fake
@pytest.fixture
def batch(monkeypatch) -> dict:
    require("gbatch")
    env = part_env("gbatch")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def fake_api(env: dict, path: str) -> dict:
    with urllib.request.urlopen(env["FAKE_BATCH_API"] + path, timeout=30) as answer:
        return json.loads(answer.read())


def job_path(env: dict, name: str) -> str:
    return (
        f"/v1/projects/{env['CLOUDSDK_CORE_PROJECT']}/locations/"
        f"{env['CLOUDSDK_BATCH_LOCATION']}/jobs/{name}"
    )


def fake_job(env: dict, name: str) -> dict | None:
    try:
        return fake_api(env, job_path(env, name))
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def fake_task_states(env: dict, name: str) -> list[str]:
    answer = fake_api(env, job_path(env, name) + "/taskGroups/group0/tasks")
    return [task["status"]["state"] for task in answer["tasks"]]


def workdir_for(env: dict) -> str:
    return f"gs://{env['XQUTE_TEST_BUCKET']}/tests/gbatch-arrays-{uuid.uuid4().hex[:10]}/wd"


def batch_opts(env: dict, **options) -> dict:
    return {
        "project": env["CLOUDSDK_CORE_PROJECT"],
        "location": env["CLOUDSDK_BATCH_LOCATION"],
        "poll_interval": 0.5,
        "query_interval": 1,
        "end_grace": 1,
        **options,
    }


def batch_xqute(env: dict, forks: int, error_strategy: str = "ignore", num_retries: int = 0,
                workdir: str | None = None, **options) -> Xqute:
    return Xqute(
        "gbatch",
        workdir=workdir or workdir_for(env),
        forks=forks,
        error_strategy=error_strategy,
        num_retries=num_retries,
        scheduler_opts=batch_opts(env, **options),
    )


def record_gcloud(scheduler: GbatchScheduler) -> list[tuple[str, ...]]:
    """The gcloud calls ``scheduler`` makes from now on (their arguments)."""
    calls: list[tuple[str, ...]] = []
    real = scheduler._gcloud

    async def recorded(*args, **kwargs):
        calls.append(args)
        return await real(*args, **kwargs)

    scheduler._gcloud = recorded
    return calls


def verbs(calls, verb: str) -> list[tuple[str, ...]]:
    """The calls of ``batch <noun> <verb>``, e.g. ``jobs submit``."""
    noun, _, what = verb.partition(" ")
    return [call for call in calls if call[1:3] == (noun, what)]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in points:
        running += step
        most = max(most, running)
    return most


async def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def text_of(path) -> str:
    return await path.a_read_text()


async def test_a_burst_is_one_batch_job_and_each_member_keeps_its_result(batch, tmp_path):
    """Five jobs, forks 2: ONE ``jobs submit`` (taskCount 5, parallelism 2),
    at most two members running at once, and each member's own rc, status and
    output (two of them fail)."""
    rcs = [0, 3, 0, 0, 5]
    xq = batch_xqute(batch, forks=2)
    calls = record_gcloud(xq.scheduler)
    for i, rc in enumerate(rcs):
        # the fake runs tasks on this machine: they leave their times in tmp_path
        await xq.feed(["bash", "-c", f"date +%s.%N > {tmp_path}/start-{i}; echo out-{i}; sleep 1; "
                                     f"date +%s.%N > {tmp_path}/end-{i}; exit {rc}"])
    await asyncio.wait_for(xq.run_until_complete(), 300)

    assert len(verbs(calls, "jobs submit")) == 1
    jids = [await job.get_jid() for job in xq.jobs]
    name = verbs(calls, "jobs submit")[0][3]
    assert jids == [f"{name}:{task}" for task in range(5)]
    assert [await job.get_rc() for job in xq.jobs] == rcs
    statuses = [await job.get_status(refresh=True) for job in xq.jobs]
    assert statuses == [JobStatus.FINISHED if rc == 0 else JobStatus.FAILED for rc in rcs]
    assert [await text_of(job.stdout_file) for job in xq.jobs] == [f"out-{i}\n" for i in range(5)]

    resource = fake_job(batch, name)
    group = resource["taskGroups"][0]
    assert (group["taskCount"], group["parallelism"]) == ("5", "2")  # parallelism = forks
    assert resource["labels"]["xqute-run"] == xq.scheduler.run_label
    assert resource["status"]["state"] == "FAILED"
    assert fake_task_states(batch, name) == ["SUCCEEDED", "FAILED", "SUCCEEDED", "SUCCEEDED", "FAILED"]
    intervals = [
        (float((tmp_path / f"start-{i}").read_text()), float((tmp_path / f"end-{i}").read_text()))
        for i in range(5)
    ]
    assert max_overlap(intervals) == 2
    # the dispatch script and the JSON are kept beside each other
    folder = xq.scheduler.array_folder(name)
    config = json.loads(await text_of(folder / "job.json"))
    assert config["taskGroups"][0]["taskSpec"]["runnables"][0]["script"]["text"] == (
        f"/bin/bash {folder.mounted}/dispatch.sh"
    )
    assert "exec /bin/bash /mnt/disks/.xqute/4/job.wrapped.gbatch" in await text_of(folder / "dispatch.sh")
    # status: the jobs list, and a tasks list only while the array job ran
    assert xq.scheduler.gcloud_calls == 1 + xq.scheduler.status_calls
    assert len(verbs(calls, "tasks list")) <= len(verbs(calls, "jobs list"))


async def test_config_edits_made_after_post_init_reach_every_member(batch):
    """What pipen does after post_init (a volume, labels, an env var added to
    ``config``) reaches all tasks of the array job."""
    from panpath import PanPath

    out = f"gs://{batch['XQUTE_TEST_BUCKET']}/tests/out-{uuid.uuid4().hex[:8]}"
    xq = batch_xqute(batch, forks=3, image_uri="debian:12", entrypoint="/bin/bash")
    scheduler = xq.scheduler
    await scheduler.post_init()
    scheduler._post_init_called = True
    spec = scheduler.config["taskGroups"][0]["taskSpec"]
    spec["volumes"].append({"gcs": {"remotePath": out.split("://", 1)[1]}, "mountPath": "/mnt/disks/out"})
    spec.setdefault("environment", {}).setdefault("variables", {})["EDITED"] = "yes"
    scheduler.config["labels"]["pipeline"] = "mypipeline"
    calls = record_gcloud(scheduler)
    for i in range(3):
        await xq.feed(["bash", "-c", f"echo $EDITED-{i} > /mnt/disks/out/{i}.txt"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    assert [await job.get_rc() for job in xq.jobs] == [0, 0, 0]
    assert len(verbs(calls, "jobs submit")) == 1
    for i in range(3):
        assert await PanPath(f"{out}/{i}.txt").a_read_text() == f"yes-{i}\n"
    resource = fake_job(batch, parse_member_jid(xq.jobs[0].jid)[0])
    assert resource["labels"]["pipeline"] == "mypipeline"
    assert resource["taskGroups"][0]["taskSpec"]["runnables"][0]["container"]["imageUri"] == "debian:12"


async def test_failed_members_are_retried(batch, tmp_path):
    """Members 0 and 2 fail their first trial; under "retry" they go again (as a
    new array, or alone) and succeed; member 1 runs once."""
    xq = batch_xqute(batch, forks=3, error_strategy="retry", num_retries=1)
    calls = record_gcloud(xq.scheduler)
    for i in range(3):
        fail_first = i != 1
        script = f"echo run >> {tmp_path}/runs-{i}; "
        if fail_first:
            script += f"[ -e {tmp_path}/tried-{i} ] || {{ touch {tmp_path}/tried-{i}; exit 7; }}; "
        await xq.feed(["bash", "-c", script + f"echo ok-{i}"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    assert [await job.get_rc() for job in xq.jobs] == [0, 0, 0]
    assert [job.trial_count for job in xq.jobs] == [1, 0, 1]
    assert [len((tmp_path / f"runs-{i}").read_text().split()) for i in range(3)] == [2, 1, 2]
    first = verbs(calls, "jobs submit")[0][3]  # the array job of the first trials
    for job in (xq.jobs[0], xq.jobs[2]):  # the failed trial is kept, the retry ran elsewhere
        assert (await text_of(job.metadir / "job.retry" / "0" / "job.rc")).strip() == "7"
        assert (await text_of(job.metadir / "job.retry" / "0" / "job.jid")).startswith(first + ":")
        assert not job.jid.startswith(first)
    assert await text_of(xq.jobs[0].stdout_file) == "ok-0\n"
    assert len(verbs(calls, "jobs submit")) in (2, 3)  # the retries together, or each alone


async def test_halt_cancels_the_array_job_in_one_call(batch):
    xq = batch_xqute(batch, forks=3, error_strategy="halt")
    calls = record_gcloud(xq.scheduler)
    await xq.feed(["sleep", "120"])
    await xq.feed(["sleep", "120"])
    await xq.feed(["bash", "-c", "sleep 2; exit 2"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    sleeper, other, failing = xq.jobs
    assert await failing.get_rc() == 2
    for job in (sleeper, other):
        assert await job.get_status(refresh=True) == JobStatus.FAILED
    name = parse_member_jid(sleeper.jid)[0]
    assert [call[3] for call in verbs(calls, "jobs cancel")] == [name]
    assert not verbs(calls, "jobs delete")
    await until(lambda: fake_job(batch, name)["status"]["state"] == "CANCELLED", 30, "the cancel")


async def test_a_job_array_that_never_starts_is_given_up_and_cancelled_once(batch):
    xq = batch_xqute(batch, forks=3, labels={"fake-batch-behaviour": "never-start"}, start_timeout=3)
    calls = record_gcloud(xq.scheduler)
    for _ in range(3):
        await xq.feed("true")
    await asyncio.wait_for(xq.run_until_complete(), 300)
    assert [await job.get_rc() for job in xq.jobs] == [-3, -3, -3]
    for job in xq.jobs:
        assert "did not start within 3 s (still QUEUED" in await text_of(job.stderr_file)
    name = parse_member_jid(xq.jobs[0].jid)[0]
    assert [call[3] for call in verbs(calls, "jobs cancel")] == [name]
    await until(lambda: fake_job(batch, name)["status"]["state"] == "CANCELLED", 30, "the cancel")


async def test_killing_one_member_from_another_process_spares_the_others(batch, tmp_path):
    """``xqute kill`` of one pending member (parallelism 1): its task never runs
    its command, the Batch job is not cancelled, the others run to their end."""
    workdir = workdir_for(batch)
    xq = batch_xqute(batch, forks=1, workdir=workdir)
    # task 0 holds the only slot until the test lets it go
    await xq.feed(["bash", "-c", f"touch {tmp_path}/started-0; for _ in $(seq 1 1200); do "
                                 f"[ -e {tmp_path}/go ] && break; sleep 0.1; done; echo zero"])
    await xq.feed(["bash", "-c", f"echo one > {tmp_path}/ran-1"])
    await xq.feed(["bash", "-c", f"echo two > {tmp_path}/ran-2"])
    runner = asyncio.ensure_future(xq.run_until_complete())
    try:
        await until(lambda: (tmp_path / "started-0").exists(), 120, "task 0 to start")
        killer = GbatchScheduler(workdir, **batch_opts(batch))
        calls = record_gcloud(killer)
        killed, gone = await killer.kill_left_running([2])
        assert (killed, gone) == ([2], [])
        assert not verbs(calls, "jobs cancel")  # the others live
        (tmp_path / "go").touch()
        await asyncio.wait_for(runner, 300)
    finally:
        runner.cancel()
    zero, one, two = xq.jobs
    assert [await zero.get_rc(), await one.get_rc()] == [0, 0]
    assert await text_of(zero.stdout_file) == "zero\n"
    assert (tmp_path / "ran-1").exists()
    assert await two.get_rc() == -3 and two.status == JobStatus.FAILED
    assert "killed by xqute" in await text_of(two.stderr_file)
    name = parse_member_jid(zero.jid)[0]
    await until(lambda: fake_job(batch, name)["status"]["state"] == "FAILED", 60, "the job to end")
    assert fake_task_states(batch, name) == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert not (tmp_path / "ran-2").exists()  # its task found the marker


async def test_a_lost_submit_reply_finds_the_array_and_submits_it_once(batch, tmp_path):
    """``jobs submit`` reaches Batch but its reply is lost (a deadline): the
    retry describes the array's name and follows it, not submitting again."""
    xq = batch_xqute(batch, forks=2)
    scheduler = xq.scheduler
    calls = record_gcloud(scheduler)
    recorded = scheduler._gcloud
    lost = []

    async def lose_first_submit_reply(*args, **kwargs):
        result = await recorded(*args, **kwargs)
        if args[1:3] == ("jobs", "submit") and not lost:
            lost.append(result)
            return CommandResult(1, "", "ERROR: (gcloud.batch.jobs.submit) DEADLINE_EXCEEDED")
        return result

    scheduler._gcloud = lose_first_submit_reply
    for i in range(2):
        await xq.feed(["bash", "-c", f"echo ran >> {tmp_path}/runs-{i}"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    assert lost and lost[0].ok  # Batch took it
    assert [await job.get_rc() for job in xq.jobs] == [0, 0]
    assert len(verbs(calls, "jobs submit")) == 1
    assert [call[3] for call in verbs(calls, "jobs describe")] == [parse_member_jid(xq.jobs[0].jid)[0]]
    assert [(tmp_path / f"runs-{i}").read_text() for i in range(2)] == ["ran\n", "ran\n"]


async def test_array_false_submits_each_job_alone(batch):
    xq = batch_xqute(batch, forks=3, array=False)
    calls = record_gcloud(xq.scheduler)
    for i in range(3):
        await xq.feed(["echo", str(i)])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    assert [await job.get_rc() for job in xq.jobs] == [0, 0, 0]
    names = [call[3] for call in verbs(calls, "jobs submit")]
    assert sorted(names) == sorted(xq.scheduler.batch_job_name(job) for job in xq.jobs)
    assert [job.jid for job in xq.jobs] == [xq.scheduler.batch_job_name(job) for job in xq.jobs]


RERUN_PROGRAM = """
import asyncio, json, os, sys
from xqute import Xqute
async def main():
    workdir, log, go, adopted = sys.argv[1:5]
    opts = json.loads(sys.argv[5])
    xq = Xqute("gbatch", workdir=workdir, forks=2, scheduler_opts=opts)
    adopt = xq.scheduler.adopt_left_running
    async def adopt_and_tell(jobs):
        # which jobs this manager follows, written once it has decided (the
        # test gives jobs 1-5 their go-ahead then, not before)
        followed = await adopt(jobs)
        with open(adopted + ".part", "w") as out:
            out.write(json.dumps(sorted(job.index for job in followed)))
        os.replace(adopted + ".part", adopted)
        return followed
    xq.scheduler.adopt_left_running = adopt_and_tell
    for i in range(6):
        # jobs 1-5 wait for the test's go-ahead (job 0 does not)
        wait = "" if i == 0 else f"for _ in $(seq 1 1200); do [ -e {go} ] && break; sleep 0.1; done; "
        await xq.feed(["bash", "-c", f"echo {i} start >> {log}; {wait}echo {i} end >> {log}"])
    await xq.run_until_complete()
    print("rcs", [await job.get_rc() for job in xq.jobs])
    print("jids", json.dumps([await job.get_jid() for job in xq.jobs]))
asyncio.run(main())
"""


async def test_a_rerun_after_the_manager_is_killed_follows_the_array_members(batch, tmp_path):
    """A manager (6 jobs, forks 2: one array job, parallelism 2) is SIGKILLed
    once job 0 ended and jobs 1 and 2 run (3-5 wait in Batch). A rerun with the
    same commands follows 1-5 from their jid files (one tasks list answers for
    them) and never starts them again; job 0, ended, runs anew. (Jobs 1-5 wait
    for a go-ahead given once the rerun has decided which jobs it follows: the
    rerun itself says so. The fake's request counts are shared by every client
    of the API, so they cannot tell when the rerun asked: a go-ahead given on
    them let members end before the rerun read their files, and those ran anew.)"""
    from panpath import PanPath

    workdir = workdir_for(batch)
    log, go = tmp_path / "log", tmp_path / "go"
    log.touch()
    opts = batch_opts(batch)

    def cmd(adopted: Path) -> list[str]:
        return [sys.executable, "-c", RERUN_PROGRAM, workdir, str(log), str(go), str(adopted),
                json.dumps(opts)]

    adopted = tmp_path / "adopted-by-the-rerun"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def lines() -> list[str]:
        return log.read_text().splitlines()

    # a session of its own: the kill takes the manager's gcloud calls in flight too
    first = subprocess.Popen(
        cmd(tmp_path / "adopted-by-the-first"), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        await until(
            lambda: {"0 end", "1 start", "2 start"} <= set(lines()) or first.poll() is not None,
            120,
            "job 0 to end and jobs 1 and 2 to start",
        )
        assert first.poll() is None, first.communicate()
        os.killpg(first.pid, signal.SIGKILL)
        _, first_err = first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    left = [(await PanPath(f"{workdir}/{i}/job.jid").a_read_text()).strip() for i in range(6)]
    name = parse_member_jid(left[1])[0]
    assert left == [f"{name}:{task}" for task in range(6)]
    # this workdir's Batch jobs: the array and any job of one member
    ours = name.rsplit("-", 2)[0] + "-"

    def creates() -> int:
        attempts = fake_api(batch, "/fake/stats")["create_attempts"]
        return sum(n for key, n in attempts.items() if key.rsplit("/", 1)[-1].startswith(ours))

    before = creates()
    # another client of the API asks about the array's tasks meanwhile (a test
    # running at the same time, a request of the killed manager that the fake
    # handles late): it must not pass for the rerun's question
    fake_task_states(batch, name)

    second = subprocess.Popen(
        cmd(adopted), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        await until(
            lambda: adopted.exists() or second.poll() is not None,
            120,
            "the rerun to decide which jobs it follows",
        )
        go.touch()
        out, second_err = await asyncio.to_thread(second.communicate, timeout=300)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    managers = f"first:\n{first_err.decode()}\nsecond:\n{second_err}"
    assert second.returncode == 0, managers
    # followed: the members the array job still had queued or running
    assert json.loads(adopted.read_text()) == [1, 2, 3, 4, 5], (lines(), managers)
    assert "rcs [0, 0, 0, 0, 0, 0]" in out, managers
    jids = json.loads(out.split("jids ", 1)[1].splitlines()[0])
    assert jids[1:] == left[1:]  # followed, not submitted again
    assert parse_member_jid(jids[0]) is None  # job 0 went again, alone
    assert creates() - before == 1, managers
    starts = [line.split()[0] for line in lines() if line.endswith(" start")]
    assert [starts.count(str(i)) for i in range(6)] == [2, 1, 1, 1, 1, 1], (lines(), managers)
    await until(lambda: fake_job(batch, name)["status"]["state"] == "SUCCEEDED", 60, "the array job")
