"""Names, values and behaviours that programs written for xqute 2.x rely on."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

from conftest import ROOT
import xqute
from xqute import Job, JobErrorStrategy, JobStatus, Scheduler, Xqute, plugin
from xqute import defaults
from xqute.path import MountedLocalPath, MountedPath, SpecLocalPath, SpecPath
from xqute.scheduler import JobQuery, SubmissionError
from xqute.schedulers import get_scheduler
from xqute.schedulers.local_scheduler import LocalScheduler


def test_top_level_names():
    for name in ("Xqute", "Job", "Scheduler", "JobStatus", "JobErrorStrategy", "plugin", "logger", "__version__"):
        assert hasattr(xqute, name), name
    assert xqute.logger.name == "XQUTE"
    assert plugin.project == "xqute"


def test_status_values_and_names():
    assert (JobStatus.INIT, JobStatus.QUEUED, JobStatus.SUBMITTED, JobStatus.RUNNING) == (0, 2, 3, 4)
    assert (JobStatus.KILLING, JobStatus.FINISHED, JobStatus.FAILED) == (5, 6, 7)
    assert JobStatus.get_name(6) == "FINISHED"
    assert JobStatus.get_name(2, 7) == ("QUEUED", "FAILED")
    assert (JobErrorStrategy.IGNORE, JobErrorStrategy.RETRY, JobErrorStrategy.HALT) == ("ignore", "retry", "halt")


def test_defaults():
    assert defaults.DEFAULT_WORKDIR_NAME == ".xqute"
    assert defaults.DEFAULT_NUM_RETRIES == 3
    assert defaults.DEFAULT_SCHEDULER_FORKS == 1
    assert defaults.DEFAULT_SUBMISSION_BATCH == 8
    assert defaults.JOBCMD_WRAPPER_LANG == "/bin/bash"
    assert defaults.DEFAULT_ERROR_STRATEGY == "ignore"
    assert isinstance(defaults.DEFAULT_CLOUD_FSPATH, str)
    assert isinstance(defaults.DEFAULT_RECHECK_INTERVAL, int)


def test_get_scheduler_by_name_and_class():
    assert get_scheduler("local") is LocalScheduler
    assert get_scheduler(LocalScheduler) is LocalScheduler
    with pytest.raises(ValueError, match="Unknown scheduler 'nope'"):
        get_scheduler("nope")
    with pytest.raises(ValueError):
        get_scheduler("../etc")


@pytest.mark.parametrize(
    "module, cls",
    [
        ("local_scheduler", "LocalScheduler"),
        ("sge_scheduler", "SgeScheduler"),
        ("slurm_scheduler", "SlurmScheduler"),
        ("ssh_scheduler", "SshScheduler"),
        ("gbatch_scheduler", "GbatchScheduler"),
        ("container_scheduler", "ContainerScheduler"),
    ],
)
def test_every_scheduler_module_imports(module, cls):
    try:
        mod = importlib.import_module(f"xqute.schedulers.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"xqute.schedulers.{module}":
            pytest.skip(f"{module} not written yet")
        raise
    assert issubclass(getattr(mod, cls), Scheduler)


def test_job_attributes_envs_and_meta_files(tmp_path):
    job = Job(3, "echo 'a b' c", tmp_path, envs={"X": 1})
    assert job.cmd == ("echo", "a b", "c")
    job.cmd = ["ls", "-l"]
    assert job.cmd == ("ls", "-l")
    assert job.metadir == SpecPath(tmp_path) / "3"
    assert job.envs["XQUTE_JOB_INDEX"] == "3"
    assert job.envs["XQUTE_METADIR"] == str(tmp_path)
    assert job.envs["XQUTE_JOB_METADIR"] == str(tmp_path / "3")
    assert job.envs["X"] == 1
    names = [p.name for p in (job.stdout_file, job.stderr_file, job.status_file, job.rc_file, job.jid_file)]
    assert names == ["job.stdout", "job.stderr", "job.status", "job.rc", "job.jid"]
    assert isinstance(job.stdout_file, SpecPath)
    assert job.trial_count == 0 and job._status == JobStatus.INIT and job._jid is None
    assert isinstance(Job.__slots__, tuple)


async def test_job_accessors(tmp_path):
    job = Job(0, "true", tmp_path)
    (tmp_path / "0").mkdir()
    assert await job.get_rc() == -9
    await job.set_rc(5)
    assert await job.get_rc() == 5
    await job.set_status(JobStatus.RUNNING)
    job._status = JobStatus.INIT
    assert await job.get_status(refresh=True) == JobStatus.RUNNING
    await job.set_jid("12345")
    job._jid = None
    assert await job.get_jid() == "12345"
    await job.clean()
    assert not job.rc_file.exists() and not job.status_file.exists()


async def test_garbage_status_and_rc_files_are_not_taken_as_final(tmp_path):
    job = Job(0, "true", tmp_path)
    (tmp_path / "0").mkdir()
    for garbage in ("", "   ", "6x", "\x00\x01", "9" * 40, "RUNNING"):
        job.status_file.write_text(garbage)
        job.rc_file.write_text(garbage)
        assert await job.read_status_file() is None
        assert await job.read_rc_file() is None
    job.status_file.write_text("99")
    assert await job.read_status_file() is None


def test_job_subclass_with_more_slots(tmp_path):
    class MyJob(Job):
        __slots__ = ("extra",)

    class MyScheduler(LocalScheduler):
        job_class = MyJob

    job = MyJob(0, "true", tmp_path)
    job.extra = 1
    assert job.extra == 1
    assert MyScheduler.job_class is MyJob


async def test_scheduler_options_and_config(tmp_path):
    sched = LocalScheduler(
        tmp_path,
        forks=3,
        prescript="pre",
        postscript="post",
        jobname_prefix="pfx",
        submission_batch=4,
        cwd="/tmp",
        timeout=5,
        mounted_workdir="/mnt/wd",
        mem="4G",
        some_flag=True,
    )
    assert sched.name == "local"
    assert sched.forks == 3 and sched.subm_batch == 4 and sched.cwd == "/tmp"
    assert sched.config.mem == "4G" and sched.config.some_flag is True
    assert sched._kwargs == {"mem": "4G", "some_flag": True}
    assert str(sched.workdir.mounted) == "/mnt/wd"
    job = await sched.create_job(7, "true")
    assert job.envs["XQUTE_JOB_METADIR"] == "/mnt/wd/7"
    assert sched.job_name(job).startswith("pfx-") and sched.job_name(job).endswith("-7")
    assert ":" not in sched.job_name(job)
    sched.workdir = SpecPath(tmp_path / "other")
    assert sched.workdir == SpecPath(tmp_path / "other")
    text = sched.wrap_job_script(job)
    assert text.startswith("#!/bin/bash\n") and "timeout 5 " in text
    path = await sched.wrapped_job_script(job)
    assert path.name == "job.wrapped.local" and path.read_text() == text
    assert all(
        callable(getattr(sched, m))
        for m in ("jobcmd_shebang", "jobcmd_init", "jobcmd_prep", "jobcmd_end", "post_init")
    )


def test_bad_scheduler_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="poll_interval"):
        LocalScheduler(tmp_path, poll_interval=0)
    with pytest.raises(ValueError, match="submit_rate"):
        LocalScheduler(tmp_path, submit_rate=-1)
    with pytest.raises(ValueError, match="timeout"):
        LocalScheduler(tmp_path, timeout=-3)
    with pytest.raises(ValueError, match="num_retries"):
        LocalScheduler(tmp_path, num_retries=-1)


def test_a_backend_must_say_how_to_kill_and_ask(tmp_path):
    class Incomplete(Scheduler):
        name = "incomplete"

        async def submit_job(self, job):
            return "1"

    with pytest.raises(TypeError, match="kill_job"):
        Incomplete(tmp_path)


async def test_a_2x_style_backend_gets_batched_calls_built_for_it(tmp_path):
    """kill_job + job_is_running only (as 2.x backends have) is enough."""

    class Old(Scheduler):
        name = "old"
        killed: list = []

        async def submit_job(self, job):
            return "1"

        async def kill_job(self, job):
            self.killed.append(job.index)

        async def job_is_running(self, job):
            return job.index % 2 == 0

    sched = Old(tmp_path)
    jobs = [await sched.create_job(i, "true") for i in range(4)]
    answers = await sched.query_jobs(jobs)
    assert [answers[j].state for j in jobs] == [JobQuery.RUNNING, JobQuery.ENDED] * 2
    await sched.kill_jobs(jobs[:2])
    assert Old.killed == [0, 1]


async def test_transient_submission_errors_are_retried_then_fail_with_rc_minus_2(workdir):
    attempts = []

    class Flaky(LocalScheduler):
        name = "flaky"

        async def submit_job(self, job):
            attempts.append(job.index)
            if job.index == 0 and len(attempts) < 3:
                raise SubmissionError("Socket timed out", transient=True)
            if job.index == 1:
                raise SubmissionError("invalid partition specified")
            return await super().submit_job(job)

    xq = Xqute(Flaky, workdir=workdir, forks=1)
    await xq.feed("echo ok")
    await xq.feed("echo never")
    await xq.run_until_complete()
    ok, refused = xq.jobs
    assert attempts.count(0) == 3 and attempts.count(1) == 1
    assert await ok.get_rc() == 0
    assert await refused.get_rc() == -2 and refused.status == JobStatus.FAILED
    assert "invalid partition specified" in refused.stderr_file.read_text()


def test_spec_and_mounted_paths_keep_their_pair(tmp_path):
    spec = SpecPath(str(tmp_path / "a b"), mounted="/mnt/x")
    assert isinstance(spec, SpecLocalPath)
    assert isinstance(spec.mounted, MountedLocalPath)
    assert str(spec.mounted) == "/mnt/x"
    child = spec / "c" / "d.txt"
    assert str(child) == str(tmp_path / "a b" / "c" / "d.txt")
    assert str(child.mounted) == "/mnt/x/c/d.txt"
    assert str(child.parent.mounted) == "/mnt/x/c"
    assert str(child.with_name("e.txt").mounted) == "/mnt/x/c/e.txt"
    assert str(child.with_suffix(".gz").mounted) == "/mnt/x/c/d.gz"
    assert str(spec.joinpath("p", "q").mounted) == "/mnt/x/p/q"
    assert child.mounted.spec == child
    assert child.mounted.is_mounted() and not SpecPath("/plain").mounted.is_mounted()
    assert pickle.loads(pickle.dumps(child)) == child
    assert str(pickle.loads(pickle.dumps(child)).mounted) == "/mnt/x/c/d.txt"
    assert spec == SpecPath(str(tmp_path / "a b"), mounted="/mnt/x")
    assert spec != SpecPath(str(tmp_path / "a b"), mounted="/mnt/y")
    assert len({spec, SpecPath(str(tmp_path / "a b"), mounted="/mnt/x")}) == 1
    assert "mounted='/mnt/x'" in repr(spec)
    assert isinstance(MountedPath("/m", spec="/s").spec, SpecPath)


def test_importing_xqute_loads_entry_point_plugins(tmp_path):
    """A plugin registered under the 'xqute' entry-point group is loaded on import."""
    dist = tmp_path / "site"
    (dist / "xq_demo_plugin").mkdir(parents=True)
    (dist / "xq_demo_plugin" / "__init__.py").write_text(
        "from xqute import plugin\n"
        "class DemoPlugin:\n"
        "    name = 'demo_ep'\n"
        "    @plugin.impl\n"
        "    def on_init(xqute):\n"
        "        pass\n"
    )
    info = dist / "xq_demo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xq-demo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[xqute]\ndemo_ep = xq_demo_plugin:DemoPlugin\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import xqute; print(xqute.plugin.get_all_plugin_names())"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{dist}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "demo_ep" in proc.stdout
