"""Cloud workdirs (s3://, gs://, az://) against real object-store emulators.

The stores are moto (S3), gcp-storage-emulator (GCS) and azurite (Azure) on
loopback, started by ``scripts/stores.sh``. The local scheduler runs real jobs
whose metadir is in a bucket: the wrapper writes its meta files there through
``python -m xqute.cloudmeta``, the manager reads them through panpath.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.realparts import ROOT, part_env, require
from xqute import JobStatus, Xqute
from xqute.path import (
    MountedPath,
    SpecPath,
    cloud_cache_path,
    job_folders_with,
    keep_local_copy,
)

SCHEMES = ("s3", "gs", "az")


@pytest.fixture
def stores(monkeypatch) -> str:
    """The stores' env in this process; returns the bucket name."""
    require("stores")
    env = part_env("stores")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env["XQUTE_TEST_BUCKET"]


def fresh_prefix(scheme: str, bucket: str) -> str:
    return f"{scheme}://{bucket}/tests/{uuid.uuid4().hex[:10]}"


async def read_text(url) -> str:
    from panpath import PanPath

    return await PanPath(str(url)).a_read_text()


# ------------------------------------------------------------------ the stores
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_panpath_reads_and_writes_through_each_store(stores, scheme):
    from panpath import PanPath

    base = PanPath(fresh_prefix(scheme, stores))
    await (base / "a.txt").a_write_text("hello\n")
    # an empty object: the GCS emulator needs the patch in scripts/gcs_emulator.py
    await (base / "empty").a_write_text("")
    await (base / "conf.json").a_write_text('{"k": 1}')
    assert await (base / "a.txt").a_read_text() == "hello\n"
    assert await (base / "empty").a_read_text() == ""
    assert await (base / "conf.json").a_read_text() == '{"k": 1}'
    names = sorted([p.name async for p in base.a_iterdir()])
    assert names == ["a.txt", "conf.json", "empty"]
    await (base / "a.txt").a_unlink()
    assert not await (base / "a.txt").a_exists()


# ------------------------------------------------------------------ the paths
@pytest.mark.parametrize("scheme", SCHEMES)
def test_spec_and_mounted_pairs_survive_derivations(scheme):
    spec = SpecPath(f"{scheme}://bucket/run/wd", mounted="/mnt/disks/wd")
    job = spec / "3" / "job.rc"
    assert str(job) == f"{scheme}://bucket/run/wd/3/job.rc"
    assert str(job.mounted) == "/mnt/disks/wd/3/job.rc"
    assert str(job.parent.mounted) == "/mnt/disks/wd/3"
    assert str(job.with_name("job.status").mounted) == "/mnt/disks/wd/3/job.status"
    assert str(job.with_suffix(".bak")) == f"{scheme}://bucket/run/wd/3/job.bak"
    assert str(job.with_suffix(".bak").mounted) == "/mnt/disks/wd/3/job.bak"
    assert str(job.mounted.spec) == str(job)
    # equality, hashing and pickling keep the pair
    same = SpecPath(f"{scheme}://bucket/run/wd/3/job.rc", mounted="/mnt/disks/wd/3/job.rc")
    other = SpecPath(f"{scheme}://bucket/run/wd/3/job.rc", mounted="/elsewhere/job.rc")
    assert job == same and hash(job) == hash(same)
    assert job != other
    restored = pickle.loads(pickle.dumps(job))
    assert restored == job and str(restored.mounted) == "/mnt/disks/wd/3/job.rc"
    assert "mounted='/mnt/disks/wd/3/job.rc'" in repr(job)
    # a cloud path seen the same from both sides
    plain = MountedPath(f"{scheme}://bucket/x")
    assert not plain.is_mounted() and str(plain.spec) == f"{scheme}://bucket/x"


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_get_fspath_gives_a_local_copy_of_a_file_and_a_folder(stores, scheme):
    base = SpecPath(fresh_prefix(scheme, stores))
    await (base / "d" / "f.txt").a_write_text("in the bucket\n")
    await (base / "d" / "sub" / "g.txt").a_write_text("deeper\n")
    local_file = await (base / "d" / "f.txt").get_fspath()
    assert Path(local_file).read_text() == "in the bucket\n"
    assert local_file == cloud_cache_path(base / "d" / "f.txt")
    local_dir = await (base / "d").get_fspath()
    assert Path(local_dir, "sub", "g.txt").read_text() == "deeper\n"


async def test_get_fspath_uses_the_copy_this_process_wrote(stores):
    path = SpecPath(fresh_prefix("gs", stores)) / "job.wrapped.local"
    await path.a_write_text("uploaded\n")
    # the local copy recorded with the upload is used as it is: no download
    keep_local_copy(path, "uploaded\n")
    local = Path(cloud_cache_path(path))
    assert await path.get_fspath() == str(local)
    # once the copy is touched by someone else, the object is fetched again
    local.write_text("changed locally\n")
    os.utime(local, ns=(1, 1))
    assert Path(await path.get_fspath()).read_text() == "uploaded\n"


# ------------------------------------------------- one listing per status round
async def test_job_folders_with_lists_the_workdir_once_for_all_jobs(stores, monkeypatch):
    from panpath import PanPath

    prefix = fresh_prefix("s3", stores)
    workdir = SpecPath(prefix + "/wd")
    for index in range(5):
        await (workdir / str(index) / "job.status").a_write_text("4\n")
    await (workdir / "1" / "job.rc").a_write_text("0\n")
    await (workdir / "3" / "job.rc").a_write_text("1\n")
    # neither an earlier trial's rc nor a sibling folder sharing the prefix count
    await (workdir / "4" / "job.retry" / "0" / "job.rc").a_write_text("1\n")
    await PanPath(prefix + "/wd2/0/job.rc").a_write_text("0\n")

    listings = []
    original = PanPath(prefix).a_glob.__func__

    def counting_glob(self, pattern):
        listings.append((str(self), pattern))
        return original(self, pattern)

    monkeypatch.setattr(type(PanPath(prefix)), "a_glob", counting_glob)
    found = await job_folders_with(workdir, "job.rc", range(5), estimated_objects=40)
    assert found == {1, 3}
    assert listings == [(prefix + "/wd", "**/job.rc")]
    # a local workdir, one job, or a listing dearer than per-job reads: no listing
    assert await job_folders_with(SpecPath("/tmp/wd"), "job.rc", range(5), 40) is None
    assert await job_folders_with(workdir, "job.rc", [2], 40) is None
    assert await job_folders_with(workdir, "job.rc", range(5), 10_000) is None
    assert len(listings) == 1


async def test_a_status_round_reads_only_the_files_of_jobs_that_ended(stores, monkeypatch):
    """A polled backend over a cloud workdir: one listing, then reads for the
    two jobs whose rc file is there, none for the three still running."""
    import xqute.job as job_module
    from xqute.scheduler import JobQuery, Scheduler

    class PolledScheduler(Scheduler):
        name = "polled"

        async def submit_job(self, job):
            return "x"

        async def kill_jobs(self, jobs):
            pass

        async def query_jobs(self, jobs):
            self.asked = [job.index for job in jobs]
            return {job: JobQuery(JobQuery.RUNNING) for job in jobs}

    scheduler = PolledScheduler(fresh_prefix("gs", stores) + "/wd")
    jobs = [await scheduler.create_job(i, ["true"]) for i in range(5)]
    for job in jobs:
        await job.set_status(JobStatus.RUNNING)
    for job, rc in ((jobs[1], 0), (jobs[3], 2)):
        await job.set_rc(rc)
        await job.set_status(JobStatus.FINISHED if rc == 0 else JobStatus.FAILED)

    reads = []
    real_read_meta = job_module.read_meta

    async def counting_read_meta(path):
        reads.append(path.name)
        return await real_read_meta(path)

    monkeypatch.setattr(job_module, "read_meta", counting_read_meta)
    ended = await scheduler.refresh_jobs(jobs)
    assert sorted(job.index for job in ended) == [1, 3]
    assert sorted(reads) == ["job.rc", "job.rc", "job.status", "job.status"]
    assert scheduler.asked == [0, 2, 4]
    assert jobs[1]._rc == 0 and jobs[3]._rc == 2


# ---------------------------------------------- the local scheduler, end to end
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_local_jobs_with_a_cloud_workdir(stores, scheme):
    workdir = fresh_prefix(scheme, stores) + "/wd"
    xq = Xqute(workdir=workdir, forks=3)
    await xq.feed(["bash", "-c", "echo out-$XQUTE_JOB_INDEX; echo err >&2"])
    await xq.feed(["bash", "-c", "echo failing; exit 3"])
    await xq.feed("true")
    await xq.run_until_complete()
    ok, bad, quiet = xq.jobs
    assert await ok.get_rc() == 0
    assert await ok.get_status(refresh=True) == JobStatus.FINISHED
    assert await read_text(ok.stdout_file) == "out-0\n"
    assert await read_text(ok.stderr_file) == "err\n"
    assert await bad.get_rc() == 3
    assert await bad.get_status(refresh=True) == JobStatus.FAILED
    assert await read_text(bad.stdout_file) == "failing\n"
    # a job that prints nothing still leaves (empty) output files
    assert await read_text(quiet.stdout_file) == ""
    assert await read_text(ok.metadir / "job.wrapped.local") != ""
    assert str(ok.metadir).startswith(workdir)


async def test_a_cloud_job_that_times_out_records_its_end_in_the_bucket(stores):
    xq = Xqute(workdir=fresh_prefix("gs", stores) + "/wd", scheduler_opts={"timeout": 1})
    await xq.feed(["bash", "-c", "echo started; sleep 30"])
    await xq.run_until_complete()
    job = xq.jobs[0]
    assert await job.get_rc() == 124
    assert await job.get_status(refresh=True) == JobStatus.FAILED
    assert await read_text(job.stdout_file) == "started\n"
    assert "timed out" in await read_text(job.stderr_file)


async def test_retried_cloud_job_keeps_the_failed_trial(stores, tmp_path):
    marker = tmp_path / "tried once"
    script = f'if [ -e "{marker}" ]; then echo second; else touch "{marker}"; echo first; exit 5; fi'
    xq = Xqute(workdir=fresh_prefix("az", stores) + "/wd", error_strategy="retry", num_retries=2)
    await xq.feed(["bash", "-c", script])
    await xq.run_until_complete()
    job = xq.jobs[0]
    assert await job.get_rc() == 0
    assert job.trial_count == 1
    assert await read_text(job.stdout_file) == "second\n"
    first = job.retry_dir / "0"
    assert (await read_text(first / "job.rc")).strip() == "5"
    assert await read_text(first / "job.stdout") == "first\n"


async def test_killed_cloud_job_is_recorded_failed(stores):
    xq = Xqute(workdir=fresh_prefix("s3", stores) + "/wd", error_strategy="halt", forks=2)
    await xq.feed(["bash", "-c", "sleep 60"])
    await xq.feed(["bash", "-c", "sleep 1; exit 9"])
    await asyncio.wait_for(xq.run_until_complete(), 120)
    sleeper, failing = xq.jobs
    assert await failing.get_rc() == 9
    assert await sleeper.get_status(refresh=True) == JobStatus.FAILED
    assert await sleeper.get_rc() != 0


# ------------------------------------------------------------ the wrapper's helper
def run_cloudmeta(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xqute.cloudmeta", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_cloudmeta_put_cat_and_finish(stores, tmp_path):
    meta = fresh_prefix("gs", stores) + "/wd/0"
    done = run_cloudmeta("put", f"{meta}/job.status", "4")
    assert done.returncode == 0, done.stderr
    assert run_cloudmeta("cat", f"{meta}/job.status").stdout == "4\n"
    (tmp_path / "job.stdout").write_text("the output\n")
    (tmp_path / "job.stderr").write_text("")
    done = run_cloudmeta("finish", meta, str(tmp_path), "0", str(JobStatus.FINISHED))
    assert done.returncode == 0, done.stderr
    assert run_cloudmeta("cat", f"{meta}/job.stdout").stdout == "the output\n"
    assert run_cloudmeta("cat", f"{meta}/job.stderr").stdout == ""
    assert run_cloudmeta("cat", f"{meta}/job.rc").stdout == "0\n"
    assert run_cloudmeta("cat", f"{meta}/job.status").stdout == f"{JobStatus.FINISHED}\n"


def test_cloudmeta_refuses_bad_usage_and_reports_missing_objects(stores):
    bad = run_cloudmeta("put", "gs://only-one-argument")
    assert bad.returncode == 2 and "usage" in bad.stderr
    missing = run_cloudmeta("cat", f"gs://{stores}/tests/no/such/object")
    assert missing.returncode == 1 and "no such object" in missing.stderr
