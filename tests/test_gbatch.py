"""The Google Cloud Batch scheduler.

The job JSON it builds is checked directly. End to end, jobs go through the real
``gcloud`` CLI to a Batch API server on loopback (``scripts/fake_batch_api.py``,
started by ``scripts/gbatch.sh``) that runs each job's wrapper on this machine
with the ``gs://`` workdir mounted from the GCS emulator, so the files a job
writes really land in the bucket.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
import uuid

import pytest

from tests.realparts import part_env, require
from xqute import JobStatus, Xqute
from xqute.scheduler import SubmissionError
from xqute.schedulers import gbatch_scheduler
from xqute.schedulers.gbatch_scheduler import JOB_NAME_RE, GbatchScheduler

OPTS = {"project": "xqute-test", "location": "us-central1"}


def make(workdir="gs://bucket/run/wd", **options) -> GbatchScheduler:
    return GbatchScheduler(workdir, **{**OPTS, **options})


def spec_of(config) -> dict:
    return config["taskGroups"][0]["taskSpec"]


def job_json_of(scheduler: GbatchScheduler, index: int = 0) -> dict:
    job = scheduler.job_class(index, ["true"], scheduler.workdir)
    return scheduler.job_json(job, job.metadir / scheduler.wrapped_script_name)


# ------------------------------------------------------------------ options
def test_default_mounted_root():
    assert GbatchScheduler.DEFAULT_MOUNTED_ROOT == "/mnt/disks"


@pytest.mark.parametrize(
    "workdir, options, message",
    [
        ("gs://b/wd", {"project": None}, "project="),
        ("gs://b/wd", {"location": None}, "location="),
        ("/local/wd", {}, "gs:// workdir"),
        ("s3://b/wd", {}, "gs:// workdir"),
        ("rel/wd", {}, "a relative one needs mount_as_cwd"),
        ("../wd", {"mount_as_cwd": "gs://b/cwd"}, "must not leave"),
        ("gs://b/wd", {"mount": "gs://b/x:/x", "volumes": "gs://b/y:/y"}, "not both"),
        ("gs://b/wd", {"mount_as_cwd": "gs://b/c", "volume_as_cwd": "gs://b/d"}, "not both"),
        ("gs://b/wd", {"mount_as_cwd": "/data"}, "mount_as_cwd must be a gs://"),
        ("gs://b/wd", {"mount_as_cwd": "gs://b/c", "cwd": "/elsewhere"}, "not both"),
        ("gs://b/wd", {"cwd": "gs://b/cwd"}, "inside the Batch VM"),
        ("gs://b/wd", {"mount": "/local/data:/mnt/disks/data"}, "gs:// folders only"),
        ("gs://b/wd", {"mount": "test"}, "Invalid mount"),
        ("gs://b/wd", {"command_timeout": 0}, "command_timeout"),
        ("gs://b/wd", {"runnables": ["echo"]}, "must be a dict"),
        (".pipen", {"mount": "gs://b/a:/mnt/disks/some", "cwd": "/mnt/disks/other/d"},
         "under none of the mounted folders"),
    ],
)
async def test_any_options_construct_and_post_init_refuses_bad_ones(workdir, options, message):
    scheduler = GbatchScheduler(workdir, **{**OPTS, **options})  # never raises
    with pytest.raises(ValueError, match=message):
        await scheduler.post_init()


@pytest.mark.parametrize(
    "options",
    [{"query_interval": -1}, {"query_interval": 10, "query_interval_max": 5}, {"end_grace": -1}],
)
def test_bad_pacing_options_are_refused_by_the_base_class_at_construction(options):
    with pytest.raises(ValueError, match="query_interval|end_grace"):
        make(**options)


def test_pacing_options_reach_the_base_class():
    scheduler = make()
    assert (scheduler.query_interval, scheduler.query_interval_max, scheduler.end_grace) == (5, 60, 10)
    scheduler = make(query_interval=2, query_interval_max=30, end_grace=3)
    assert (scheduler.query_interval, scheduler.query_interval_max, scheduler.end_grace) == (2, 30, 3)
    # pacing options are not taken for job JSON keys
    assert not {"query_interval", "query_interval_max", "end_grace"} & set(scheduler.config)


def test_a_non_list_task_groups_is_a_type_error():
    with pytest.raises(TypeError, match="taskGroups must be a list"):
        make(taskGroups=1)
    with pytest.raises(TypeError, match="taskGroups\\[0\\] must be a dict"):
        make(taskGroups=[1])
    with pytest.raises(TypeError, match="volumes must be a list"):
        make(taskGroups=[{"taskSpec": {"volumes": {}}}])


async def test_no_gcloud_is_needed_to_construct_or_post_init(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no gcloud anywhere
    scheduler = make(mount="gs://data/ref:/mnt/disks/ref")
    await scheduler.post_init()
    assert len(spec_of(scheduler.config)["volumes"]) == 2


async def test_a_missing_gcloud_fails_the_submission_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    scheduler = make()
    await scheduler.post_init()
    job = scheduler.job_class(0, ["true"], scheduler.workdir)

    async def no_write(*_args, **_kwargs):
        return None

    async def script(_job):
        return job.metadir / scheduler.wrapped_script_name

    monkeypatch.setattr(gbatch_scheduler, "write_meta", no_write)
    monkeypatch.setattr(scheduler, "wrapped_job_script", script)
    with pytest.raises(SubmissionError, match="not found: gcloud.*gcloud=") as raised:
        await scheduler.submit_job(job)
    assert not raised.value.transient  # not retried: the job fails at once


@pytest.mark.parametrize(
    "label, state, ran, found",
    [
        ("ours", "QUEUED", False, True),
        ("ours", "RUNNING", False, True),
        ("ours", "SUCCEEDED", False, False),  # an old job of the name: freed on resubmit
        ("ours", "SUCCEEDED", True, True),  # the wrapper ran: it is this one, ended
        ("other", "RUNNING", False, False),  # another workdir's
        ("other", "SUCCEEDED", True, False),
        (None, None, False, False),  # Batch has no such job
        (None, None, True, False),
    ],
)
async def test_find_submitted_takes_the_job_of_its_name_and_run_label(monkeypatch, label, state, ran, found):
    """After a submit whose reply was lost, one ``describe`` of the job's name."""
    from xqute.utils import CommandResult

    scheduler = make()
    job = scheduler.job_class(3, ["true"], scheduler.workdir)
    name = scheduler.batch_job_name(job)
    calls = []

    async def describe(*args, **_kwargs):
        calls.append(args)
        if state is None:
            return CommandResult(1, "", f"ERROR: (gcloud.batch.jobs.describe) NOT_FOUND: {name}")
        run = scheduler.run_label if label == "ours" else "0" * 16
        resource = {"uid": "u-7", "status": {"state": state}, "labels": {"xqute-run": run}}
        return CommandResult(0, json.dumps(resource), "")

    monkeypatch.setattr(gbatch_scheduler, "run_command", describe)
    assert await scheduler.find_submitted(job, ran) == (name if found else None)
    assert [args[1:5] for args in calls] == [("batch", "jobs", "describe", name)]
    if found:  # followed as submitted: the list is checked against its uid
        assert scheduler._uids[name] == "u-7"


@pytest.mark.parametrize("ran", [False, True])
async def test_find_submitted_when_batch_cannot_be_asked(monkeypatch, ran):
    """Not run: None (a resubmit meets the name taken and frees it). Run: the
    error, rather than the base class's word that Batch has no record of it."""
    from xqute.utils import CommandResult

    scheduler = make()
    job = scheduler.job_class(0, ["true"], scheduler.workdir)

    async def unavailable(*_args, **_kwargs):
        return CommandResult(1, "", "ERROR: (gcloud.batch.jobs.describe) UNAVAILABLE")

    monkeypatch.setattr(gbatch_scheduler, "run_command", unavailable)
    if ran:
        with pytest.raises(SubmissionError, match="cannot ask Batch"):
            await scheduler.find_submitted(job, ran)
    else:
        assert await scheduler.find_submitted(job, ran) is None


async def test_a_job_just_submitted_missing_from_the_list_gets_no_answer_for_a_while(monkeypatch):
    """Lists lag behind creation: no answer (asked again next round) for
    LIST_LAG seconds after submission, then gone; a job not submitted by this
    scheduler (left by an earlier run) is gone at once."""
    from xqute.utils import CommandResult

    scheduler = make()
    fresh, old = (scheduler.job_class(i, ["true"], scheduler.workdir) for i in (0, 1))
    fresh._jid, old._jid = "gbatch-fresh-0", "gbatch-old-1"
    scheduler._remember_submitted(fresh.jid, "u-1")

    async def empty_list(*_args, **_kwargs):
        return CommandResult(0, "[]", "")

    monkeypatch.setattr(gbatch_scheduler, "run_command", empty_list)
    answers = await scheduler.query_jobs([fresh, old])
    assert fresh not in answers
    assert answers[old].state == "ended" and "is gone" in answers[old].reason
    scheduler._submitted_at[fresh.jid] -= gbatch_scheduler.LIST_LAG  # LIST_LAG later
    answers = await scheduler.query_jobs([fresh])
    assert answers[fresh].state == "ended" and "is gone" in answers[fresh].reason


@pytest.mark.parametrize(
    "prefix", ["Has_Underscore", "9starts-with-digit", "x" * 80, "处理", "My.Proc-2"]
)
def test_any_prefix_gives_a_valid_batch_job_name(prefix):
    scheduler = make(jobname_prefix=prefix)
    for index in (0, 7, 123456789):
        name = scheduler.batch_job_name(scheduler.job_class(index, ["true"], scheduler.workdir))
        assert JOB_NAME_RE.match(name), name
    other = make("gs://bucket/run/other", jobname_prefix=prefix)
    job = scheduler.job_class(3, ["true"], scheduler.workdir)
    assert scheduler.batch_job_name(job) != other.batch_job_name(job)


def test_job_name_is_lowercased():
    scheduler = make(jobname_prefix="MyPipe")
    name = scheduler.batch_job_name(scheduler.job_class(7, ["true"], scheduler.workdir))
    assert name.startswith("mypipe-") and name.endswith("-7")


# ------------------------------------------------------------------ the job JSON
async def test_job_json_has_the_script_volumes_labels_and_policies():
    scheduler = make(
        mount=["gs://data-bucket/ref:/mnt/disks/ref"],
        service_account="runner@proj.iam.gserviceaccount.com",
        network="default",
        subnetwork="regions/us-central1/subnetworks/default",
        no_external_ip_address=True,
        machine_type="e2-standard-4",
        provisioning_model="SPOT",
        labels={"team": "genomics"},
        taskGroups=[{"taskSpec": {"maxRunDuration": "3600s"}, "parallelism": "1"}],
    )
    await scheduler.post_init()
    config = job_json_of(scheduler)
    spec = spec_of(config)
    assert spec["runnables"] == [
        {"script": {"text": "/bin/bash /mnt/disks/.xqute/0/job.wrapped.gbatch"}}
    ]
    assert spec["volumes"] == [
        {"gcs": {"remotePath": "bucket/run/wd"}, "mountPath": "/mnt/disks/.xqute"},
        {"gcs": {"remotePath": "data-bucket/ref"}, "mountPath": "/mnt/disks/ref"},
    ]
    assert spec["maxRunDuration"] == "3600s"
    policy = config["allocationPolicy"]
    assert policy["serviceAccount"] == {"email": "runner@proj.iam.gserviceaccount.com"}
    assert policy["network"]["networkInterfaces"] == [
        {
            "network": "default",
            "subnetwork": "regions/us-central1/subnetworks/default",
            "noExternalIpAddress": True,
        }
    ]
    assert policy["instances"][0]["policy"] == {
        "machineType": "e2-standard-4",
        "provisioningModel": "SPOT",
    }
    labels = config["labels"]
    assert labels["team"] == "genomics"
    assert labels["xqute-run"] == scheduler.run_label
    assert labels["sacct"] == "runner"
    assert config["logsPolicy"] == {"destination": "CLOUD_LOGGING"}
    # every job of the run shares the label the status query filters on
    assert len(scheduler.run_label) == 16


async def test_config_is_the_live_job_json_clients_read_and_edit():
    scheduler = make(
        mount="gs://test-bucket/path:/mnt/disks/path",
        image_uri="some-image",
        entrypoint="/bin/bashx",
        commands=["-c"],
    )
    spec = spec_of(scheduler.config)
    container = spec["runnables"][0]["container"]
    assert container["image_uri"] == "some-image"
    assert container["entrypoint"] == "/bin/bashx"
    assert container["commands"] == ["-c"]
    assert spec["volumes"] == []
    await scheduler.post_init()
    assert spec_of(scheduler.config)["volumes"][-1] == {
        "gcs": {"remotePath": "test-bucket/path"}, "mountPath": "/mnt/disks/path"
    }
    # what pipen does after post_init: more volumes, labels, another image
    spec_of(scheduler.config)["volumes"].append(
        {"gcs": {"remotePath": "test-bucket/out"}, "mountPath": "/mnt/disks/out"}
    )
    scheduler.config["labels"]["pipeline"] = "mypipeline"
    spec_of(scheduler.config)["runnables"][0]["container"]["image_uri"] = "other-image"
    submitted = job_json_of(scheduler)
    assert spec_of(submitted)["volumes"][-1]["mountPath"] == "/mnt/disks/out"
    assert submitted["labels"]["pipeline"] == "mypipeline"
    container = spec_of(submitted)["runnables"][0]["container"]
    # Batch's own field name, and the wrapper call added to a copy only
    assert container == {
        "imageUri": "other-image",
        "entrypoint": "/bin/bashx",
        "commands": ["-c", "/bin/bash /mnt/disks/.xqute/0/job.wrapped.gbatch"],
    }
    assert spec_of(scheduler.config)["runnables"][0]["container"]["commands"] == ["-c"]


async def test_post_init_runs_once_and_never_doubles_the_volumes():
    scheduler = make(mount="gs://b/ref:/mnt/disks/ref")
    await scheduler.post_init()
    scheduler.workdir = scheduler.workdir / "proc"  # as pipen does
    await scheduler.post_init()
    assert len(spec_of(scheduler.config)["volumes"]) == 2
    assert str(scheduler.workdir) == "gs://bucket/run/wd/proc"
    assert str(scheduler.workdir.mounted) == "/mnt/disks/.xqute/proc"


async def test_kwargs_say_what_the_mounts_and_workdir_are():
    scheduler = make(mount="gs://b/ref:/mnt/disks/ref", mount_as_cwd="gs://b/cwd")
    assert scheduler._kwargs["mount"] == "gs://b/ref:/mnt/disks/ref"
    assert scheduler._kwargs["mount_as_cwd"] == "gs://b/cwd"
    assert scheduler._kwargs["workdir"] == "gs://bucket/run/wd"
    await scheduler.post_init()
    assert scheduler._kwargs["mounted_workdir"] == "/mnt/disks/.xqute"
    volumes = GbatchScheduler(".pipen", volumes="gs://b/ref:/mnt/disks/ref", volume_as_cwd="gs://b/c", **OPTS)
    await volumes.post_init()  # the 2.x aliases land under the same keys
    assert volumes._kwargs["mount"] == "gs://b/ref:/mnt/disks/ref"
    assert volumes._kwargs["workdir"] == "gs://b/c/.pipen"
    assert volumes._kwargs["mounted_workdir"] == "/mnt/disks/.cwd/.pipen"


async def test_mount_as_cwd_comes_first_and_the_workdir_second():
    scheduler = make("gs://bucket/.xqute", mount_as_cwd="gs://bucket/cwd", mount="gs://b/ref:/mnt/disks/ref")
    await scheduler.post_init()
    assert [v["mountPath"] for v in spec_of(scheduler.config)["volumes"]] == [
        "/mnt/disks/.cwd", "/mnt/disks/.xqute", "/mnt/disks/ref"
    ]
    assert scheduler.cwd == "/mnt/disks/.cwd"


async def test_mount_as_cwd_takes_a_relative_workdir_inside_it():
    scheduler = GbatchScheduler(".pipeline", mount_as_cwd="gs://bucket/project", **OPTS)
    assert scheduler.cwd == "/mnt/disks/.cwd"
    await scheduler.post_init()
    assert str(scheduler.workdir) == "gs://bucket/project/.pipeline"
    assert str(scheduler.workdir.mounted) == "/mnt/disks/.cwd/.pipeline"
    # the cwd's volume holds the workdir: no second one
    assert spec_of(scheduler.config)["volumes"] == [
        {"gcs": {"remotePath": "bucket/project"}, "mountPath": "/mnt/disks/.cwd"}
    ]


async def test_a_relative_workdir_lies_under_the_bucket_that_holds_cwd():
    scheduler = GbatchScheduler(
        ".pipen",
        mount=["gs://bucket/other:/mnt/disks", "gs://bucket/a/b/c:/mnt/disks/some"],
        cwd="/mnt/disks/some/dir1/dir2",
        **OPTS,
    )
    await scheduler.post_init()
    # the deepest mount holding cwd decides
    assert str(scheduler.workdir) == "gs://bucket/a/b/c/dir1/dir2/.pipen"
    assert str(scheduler.workdir.mounted) == "/mnt/disks/some/dir1/dir2/.pipen"
    assert [v["mountPath"] for v in spec_of(scheduler.config)["volumes"]] == [
        "/mnt/disks", "/mnt/disks/some"
    ]
    assert scheduler.cwd == "/mnt/disks/some/dir1/dir2"


async def test_a_gs_workdir_with_cwd_under_no_mount_is_fine():
    scheduler = make(cwd="/tmp/scratch")  # a folder of the VM itself
    await scheduler.post_init()
    assert str(scheduler.workdir.mounted) == "/mnt/disks/.xqute"


async def test_a_mount_at_another_place_does_not_hide_the_workdir():
    # mounted_workdir is inside the mount, but the mount holds another folder
    scheduler = make(mounted_workdir="/mnt/disks/some/wd", mount="gs://bucket/data:/mnt/disks/some")
    await scheduler.post_init()
    assert {"gcs": {"remotePath": "bucket/run/wd"}, "mountPath": "/mnt/disks/some/wd"} in (
        spec_of(scheduler.config)["volumes"]
    )
    # and when it holds the workdir itself, one volume does
    scheduler = make(mounted_workdir="/mnt/disks/some/wd", mount="gs://bucket/run:/mnt/disks/some")
    await scheduler.post_init()
    assert [v["mountPath"] for v in spec_of(scheduler.config)["volumes"]] == ["/mnt/disks/some"]


async def test_mount_as_cwd_set_after_post_init_reaches_the_submission():
    scheduler = make()
    await scheduler.post_init()
    scheduler._kwargs["mount_as_cwd"] = "gs://bucket/late-cwd"
    scheduler._sync_mount_as_cwd()  # what submit_job does first
    volumes = spec_of(job_json_of(scheduler))["volumes"]
    assert volumes[0] == {"gcs": {"remotePath": "bucket/late-cwd"}, "mountPath": "/mnt/disks/.cwd"}
    assert scheduler.cwd == "/mnt/disks/.cwd"
    job = scheduler.job_class(0, ["true"], scheduler.workdir)
    assert "cd /mnt/disks/.cwd" in scheduler.wrap_job_script(job)
    # changed again: the old volume goes, never two at /mnt/disks/.cwd
    scheduler._kwargs["mount_as_cwd"] = "gs://bucket/later"
    scheduler._sync_mount_as_cwd()
    mounts = [v["mountPath"] for v in spec_of(scheduler.config)["volumes"]]
    assert mounts == ["/mnt/disks/.cwd", "/mnt/disks/.xqute"]
    assert spec_of(scheduler.config)["volumes"][0]["gcs"]["remotePath"] == "bucket/later"
    scheduler._kwargs["mount_as_cwd"] = "/not/gcs"
    with pytest.raises(SubmissionError, match="gs://"):
        scheduler._sync_mount_as_cwd()


async def test_container_runnable_commands_and_extra_runnables_in_order():
    scheduler = make(
        image_uri="ubuntu:24.04",
        runnables=[
            {"script": {"text": "echo after"}},
            {"script": {"text": "echo first"}, "order": -2},
            {"script": {"text": "echo second"}, "order": -1},
        ],
    )
    await scheduler.post_init()
    runnables = spec_of(job_json_of(scheduler, 1))["runnables"]
    assert [r.get("script", {}).get("text") for r in runnables] == [
        "echo first", "echo second", None, "echo after"
    ]
    assert runnables[2]["container"] == {
        "imageUri": "ubuntu:24.04",
        "entrypoint": "/bin/bash",
        "commands": ["/mnt/disks/.xqute/1/job.wrapped.gbatch"],
    }
    # an entrypoint of the "-c" kind gets one command string
    scheduler = make(image_uri="img", entrypoint="/bin/sh", commands=["-c"])
    await scheduler.post_init()
    container = spec_of(job_json_of(scheduler, 1))["runnables"][0]["container"]
    assert container["commands"] == ["-c", "/bin/bash /mnt/disks/.xqute/1/job.wrapped.gbatch"]
    # placeholders
    scheduler = make(image_uri="img", entrypoint="env", commands=["{lang}", "{script}"])
    await scheduler.post_init()
    container = spec_of(job_json_of(scheduler, 1))["runnables"][0]["container"]
    assert container["commands"] == ["/bin/bash", "/mnt/disks/.xqute/1/job.wrapped.gbatch"]
    # a container without an image is refused at submission
    scheduler = make(taskGroups=[{"taskSpec": {"runnables": [{"container": {}}]}}])
    with pytest.raises(SubmissionError, match="needs an image"):
        job_json_of(scheduler)


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


def fake_state(env: dict, name: str) -> str | None:
    path = (
        f"/v1/projects/{env['CLOUDSDK_CORE_PROJECT']}/locations/"
        f"{env['CLOUDSDK_BATCH_LOCATION']}/jobs/{name}"
    )
    try:
        return fake_api(env, path)["status"]["state"]
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def workdir_for(env: dict) -> str:
    return f"gs://{env['XQUTE_TEST_BUCKET']}/tests/gbatch-{uuid.uuid4().hex[:10]}/wd"


def batch_xqute(env: dict, workdir: str | None = None, **options) -> Xqute:
    opts = {
        "project": env["CLOUDSDK_CORE_PROJECT"],
        "location": env["CLOUDSDK_BATCH_LOCATION"],
        "poll_interval": 0.5,
        "query_interval": 1,
        "end_grace": 1,
        **options,
    }
    forks = opts.pop("forks", 4)
    strategy = opts.pop("error_strategy", "ignore")
    return Xqute(
        "gbatch",
        workdir=workdir or workdir_for(env),
        forks=forks,
        error_strategy=strategy,
        scheduler_opts=opts,
    )


async def read_text(path) -> str:
    return await path.a_read_text()


async def test_jobs_run_on_batch_and_leave_their_files_in_the_bucket(batch):
    before = fake_api(batch, "/fake/stats")["api"]
    # one Batch job per job (a burst goes as one array job unless array is
    # False: see tests/test_gbatch_arrays.py)
    xq = batch_xqute(batch, array=False)
    await xq.feed(["bash", "-c", "echo hello from $XQUTE_JOB_INDEX; echo warn >&2"])
    await xq.feed(["bash", "-c", "exit 4"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    ok, bad = xq.jobs
    assert await ok.get_status(refresh=True) == JobStatus.FINISHED
    assert await ok.get_rc() == 0
    assert await read_text(ok.stdout_file) == "hello from 0\n"
    assert await read_text(ok.stderr_file) == "warn\n"
    assert await bad.get_rc() == 4
    assert await bad.get_status(refresh=True) == JobStatus.FAILED
    # the job JSON is kept in the metadir, and names the wrapper as the VM sees it
    config = json.loads(await read_text(ok.metadir / "job.wrapped.gbatch.json"))
    text = config["taskGroups"][0]["taskSpec"]["runnables"][0]["script"]["text"]
    assert text == f"/bin/bash {ok.metadir.mounted}/job.wrapped.gbatch"
    # status came from the files and `jobs list`: no `describe` per job
    after = fake_api(batch, "/fake/stats")["api"]
    assert after.get("get", 0) == before.get("get", 0)
    assert after.get("create", 0) - before.get("create", 0) == 2
    assert xq.scheduler.gcloud_calls == 2 + xq.scheduler.status_calls
    assert fake_state(batch, await ok.get_jid()) == "SUCCEEDED"
    assert fake_state(batch, await bad.get_jid()) == "FAILED"


async def test_edits_made_after_post_init_reach_batch(batch):
    """What pipen does: post_init, then a volume and labels added to config."""
    from panpath import PanPath

    out = f"gs://{batch['XQUTE_TEST_BUCKET']}/tests/out-{uuid.uuid4().hex[:8]}"
    xq = batch_xqute(batch, image_uri="debian:12", entrypoint="/bin/bash")
    scheduler = xq.scheduler
    await scheduler.post_init()
    scheduler._post_init_called = True
    scheduler.config["taskGroups"][0]["taskSpec"]["volumes"].append(
        {"gcs": {"remotePath": out.split("://", 1)[1]}, "mountPath": "/mnt/disks/out"}
    )
    scheduler.config["labels"]["pipeline"] = "mypipeline"
    await xq.feed(["bash", "-c", "echo written >/mnt/disks/out/result.txt"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert await job.get_rc() == 0, await read_text(job.stderr_file)
    assert await PanPath(out + "/result.txt").a_read_text() == "written\n"
    path = (
        f"/v1/projects/{batch['CLOUDSDK_CORE_PROJECT']}/locations/"
        f"{batch['CLOUDSDK_BATCH_LOCATION']}/jobs/{await job.get_jid()}"
    )
    resource = fake_api(batch, path)
    assert resource["labels"]["pipeline"] == "mypipeline"
    assert resource["labels"]["xqute-run"] == scheduler.run_label
    runnable = resource["taskGroups"][0]["taskSpec"]["runnables"][0]
    assert runnable["container"]["imageUri"] == "debian:12"


async def test_a_missing_gcloud_fails_each_job_at_submission(batch):
    xq = batch_xqute(batch, gcloud="/no/such/gcloud")  # made without complaint
    await xq.feed(["true"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert await job.get_rc() == -2
    stderr = await read_text(job.stderr_file)
    assert "submission to gbatch failed" in stderr
    assert "/no/such/gcloud" in stderr and "gcloud= to its path" in stderr


async def test_named_mount_and_container_runnable(batch):
    from panpath import PanPath

    data = f"gs://{batch['XQUTE_TEST_BUCKET']}/tests/data-{uuid.uuid4().hex[:8]}"
    await PanPath(data + "/ref.txt").a_write_text("reference data\n")
    # the fake runs a container's entrypoint and commands without the image
    xq = batch_xqute(
        batch, mount=[f"REF={data}/ref.txt"], image_uri="debian:12", entrypoint="/bin/bash"
    )
    await xq.feed(["bash", "-c", 'cat "$REF"; echo "$REF"'])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert await job.get_rc() == 0, await read_text(job.stderr_file)
    out = (await read_text(job.stdout_file)).splitlines()
    assert out[0] == "reference data"
    assert out[1].startswith("/mnt/disks/") and out[1].endswith("/ref.txt")


async def test_job_that_fails_before_running_gets_rc_minus_3_with_the_state(batch):
    xq = batch_xqute(batch, labels={"fake-batch-behaviour": "fail-before-run"})
    await xq.feed("true")
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert await job.get_rc() == -3
    assert await job.get_status(refresh=True) == JobStatus.FAILED
    stderr = await read_text(job.stderr_file)
    assert "FAILED" in stderr and "no VM could be allocated" in stderr


async def test_job_that_never_starts_is_given_up_and_cancelled(batch):
    xq = batch_xqute(batch, labels={"fake-batch-behaviour": "never-start"}, start_timeout=3)
    await xq.feed("true")
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert await job.get_rc() == -3
    assert "did not start within 3 s (still QUEUED" in await read_text(job.stderr_file)
    for _ in range(50):
        if fake_state(batch, await job.get_jid()) == "CANCELLED":
            break
        await asyncio.sleep(0.2)
    assert fake_state(batch, await job.get_jid()) == "CANCELLED"


async def test_quota_errors_on_submit_are_retried(batch):
    xq = batch_xqute(batch, labels={"fake-batch-quota-errors": "2"})
    await xq.feed(["echo", "in the end"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    job = xq.jobs[0]
    assert await job.get_rc() == 0
    assert await read_text(job.stdout_file) == "in the end\n"
    attempts = fake_api(batch, "/fake/stats")["create_attempts"]
    name = (
        f"projects/{batch['CLOUDSDK_CORE_PROJECT']}/locations/"
        f"{batch['CLOUDSDK_BATCH_LOCATION']}/jobs/{await job.get_jid()}"
    )
    assert attempts[name] == 3  # two refused, the third taken


async def test_reusing_a_job_name_waits_for_the_old_jobs_deletion(batch):
    workdir = workdir_for(batch)
    first = batch_xqute(batch, workdir=workdir)
    await first.feed(["echo", "first run"])
    await asyncio.wait_for(first.run_until_complete(), 300)
    name = await first.jobs[0].get_jid()
    assert fake_state(batch, name) == "SUCCEEDED"
    deletes = fake_api(batch, "/fake/stats")["api"].get("delete", 0)

    second = batch_xqute(batch, workdir=workdir)
    await second.feed(["echo", "second run"])
    await asyncio.wait_for(second.run_until_complete(), 300)
    job = second.jobs[0]
    assert await job.get_jid() == name
    assert await job.get_rc() == 0
    assert await read_text(job.stdout_file) == "second run\n"
    assert fake_api(batch, "/fake/stats")["api"]["delete"] > deletes


async def test_kill_cancels_the_batch_jobs(batch):
    xq = batch_xqute(batch, error_strategy="halt")
    await xq.feed(["bash", "-c", "sleep 120"])
    await xq.feed(["bash", "-c", "sleep 3; exit 2"])
    await asyncio.wait_for(xq.run_until_complete(), 300)
    sleeper, failing = xq.jobs
    assert await failing.get_rc() == 2
    assert await sleeper.get_status(refresh=True) == JobStatus.FAILED
    # both went as one array job (<name>:<task>): cancelled as a whole
    name = (await sleeper.get_jid()).partition(":")[0]
    for _ in range(50):
        if fake_state(batch, name) == "CANCELLED":
            break
        await asyncio.sleep(0.2)
    assert fake_state(batch, name) == "CANCELLED"


async def test_job_deleted_outside_xqute_fails_with_rc_minus_3(batch):
    xq = batch_xqute(batch)
    await xq.feed(["bash", "-c", "sleep 120"])
    runner = asyncio.ensure_future(xq.run_until_complete())
    job = xq.jobs[0]
    for _ in range(300):
        if job._jid and fake_state(batch, job._jid) == "RUNNING":
            break
        await asyncio.sleep(0.2)
    deleted = await asyncio.to_thread(
        subprocess.run,
        ["gcloud", "batch", "jobs", "delete", job._jid, "--quiet"],
        capture_output=True,
        text=True,
    )
    assert deleted.returncode == 0, deleted.stderr
    await asyncio.wait_for(runner, 300)
    assert await job.get_status(refresh=True) == JobStatus.FAILED
    stderr = await read_text(job.stderr_file)
    # the wrapper was killed with the VM (143), or xqute saw the job go (-3)
    rc = await job.get_rc()
    assert rc == -3 and ("DELETION_IN_PROGRESS" in stderr or "is gone" in stderr) or rc == 143
