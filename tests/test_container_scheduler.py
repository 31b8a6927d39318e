"""ContainerScheduler against real podman (``scripts/podman.sh``), directly and
through the docker CLI talking to ``podman system service``.

Apptainer is not packaged for this machine: its command lines are checked as
text, with a fake ``apptainer`` binary (in a folder named ``fake_runtime``) that
is never run. Option checks use such fakes too; everything that runs a job runs
it in a real container.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.realparts import IN_CI, ROOT, part_env, require
from xqute import JobStatus, Xqute
from xqute.schedulers.container_scheduler import (
    CLIENT_LOG_NAME,
    ContainerScheduler,
    parse_mounts,
    runtime_kind,
)


def read(path) -> str:
    return Path(path).read_text()


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def fake_runtime(tmp_path):
    """Make a fake runtime binary by name; it is never meant to run."""
    folder = tmp_path / "fake_runtime"
    folder.mkdir()

    def make(name: str) -> str:
        path = folder / name
        path.write_text("#!/bin/sh\necho 'fake runtime: not runnable' >&2\nexit 99\n")
        path.chmod(0o755)
        return str(path)

    return make


@pytest.fixture
def image(monkeypatch) -> str:
    """The real podman is up (DOCKER_HOST set for the docker CLI); the local image."""
    require("podman")
    env = part_env("podman")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env["XQUTE_TEST_IMAGE"]


def runtime_bins() -> list:
    return [
        pytest.param("podman", id="podman"),
        pytest.param("docker", id="docker-cli"),
    ]


def need_bin(binary: str) -> None:
    if shutil.which(binary):
        return
    msg = f"{binary} CLI is not installed here"
    if IN_CI:
        pytest.fail(msg + "; CI=true, so this must run")
    pytest.skip(msg)


def unique_prefix() -> str:
    return f"xqt{uuid.uuid4().hex[:8]}"


def containers(prefix: str) -> list[str]:
    """``name status`` of every container (any state) whose name starts with prefix."""
    proc = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}} {{.Status}}", "--filter", f"name=^{prefix}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith(prefix)]


async def run_jobs(workdir, cmds, *, envs=None, forks=2, **opts) -> Xqute:
    xq = Xqute(
        "container",
        workdir=workdir,
        forks=forks,
        jobname_prefix=opts.pop("jobname_prefix", unique_prefix()),
        error_strategy=opts.pop("error_strategy", "ignore"),
        scheduler_opts=opts,
    )
    for cmd in cmds:
        await xq.feed(cmd, envs=envs)
    await xq.run_until_complete()
    return xq


# ------------------------------------------------------- without a runtime
def test_module_imports_without_any_runtime_and_construction_says_why(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        from xqute.schedulers import get_scheduler
        cls = get_scheduler("container")
        try:
            cls(sys.argv[1], image="busybox")
        except FileNotFoundError as exc:
            print("ERROR:", exc)
        else:
            print("constructed")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "wd")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PATH": str(tmp_path / "empty-bin")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "ERROR:" in proc.stdout
    assert "'docker' was not found on PATH" in proc.stdout


def test_bad_options_are_refused_with_clear_errors(tmp_path, fake_runtime):
    docker = fake_runtime("docker")
    wd = str(tmp_path / "wd")
    # one option alone that cannot work: refused at once
    with pytest.raises(ValueError, match="needs an image"):
        ContainerScheduler(wd, bin=docker)


@pytest.mark.parametrize(
    "args, opts, message",
    [
        ((), dict(volumes=["/a:/b"], mount=["/c:/d"]), "not both"),
        ((), dict(volume_as_cwd="/a", mount_as_cwd="/b"), "not both"),
        ((), dict(volume_as_cwd="/a", cwd="/x"), "do not pass 'cwd'"),
        ((), dict(volumes="no-colon-here"), "Invalid mount"),
        ((), dict(volumes="/host:relative"), "must be absolute"),
        (("rel-workdir",), dict(cwd="/not/mounted"), "no volume mounts"),
        (("rel-workdir",), dict(cwd="/mnt/x/y", volumes="/h:/mnt/other"), "no volume mounts"),
        (("gs://bucket/wd",), {}, "needs a local workdir"),
        ((), dict(mounted_workdir="relative/inside"), "absolute path inside"),
        ((), dict(volumes=["/h1:/same", "/h2:/same"]), "Two mounts at '/same' with different host paths"),
        ((), dict(volumes=["/h:/same", "/h:/same:ro"]), "Two mounts at '/same' with different options"),
        ((), dict(volumes="/other:/mnt/disks/.xqute"), "Two mounts at '/mnt/disks/.xqute'"),
        ((), dict(volumes=["N=/h1", "N=/h2"]), "Two mounts at '/mnt/disks/NAMED_MOUNTS/N'"),
        ((), dict(bin="apptainer", user="1:1"), "apptainer runs jobs as the calling user"),
        ((), dict(bin="apptainer", volumes="/a,b:/c"), "contains"),
    ],
)
async def test_any_option_combination_constructs_and_post_init_refuses_a_bad_one(
    tmp_path, fake_runtime, args, opts, message
):
    opts = dict(opts)
    opts["bin"] = fake_runtime(opts.get("bin", "docker"))
    if not args:
        args = (str(tmp_path / "wd"),)
    sched = ContainerScheduler(*args, image="i", **opts)  # 2.x clients build it first
    assert sched.volumes == []
    with pytest.raises(ValueError, match=message):
        await sched.post_init()
    assert sched.volumes == []  # nothing half-done


def test_runtime_kind_comes_from_the_binary_name():
    assert runtime_kind("/usr/bin/docker") == "docker"
    assert runtime_kind("podman") == "podman"
    assert runtime_kind("/opt/podman-remote") == "podman"
    assert runtime_kind("/usr/local/bin/apptainer") == "apptainer"
    assert runtime_kind("singularity") == "apptainer"
    assert runtime_kind("nerdctl") == "docker"  # a docker-compatible CLI


def test_mount_specs_named_file_and_folder(tmp_path):
    data = tmp_path / "data dir"
    data.mkdir()
    conf = tmp_path / "conf" / "tool.ini"
    conf.parent.mkdir()
    conf.write_text("x")
    mounts, named = parse_mounts(
        [f"DATA={data}/", f"CONF={conf}", "/h/x:/in/x:ro"], "/mnt/disks"
    )
    # a named folder at exactly NAMED_MOUNTS/<NAME> (as utils.sanitize_mounts
    # puts it), a named file by its folder under that
    assert [(m.host, m.inside, m.options) for m in mounts] == [
        (str(data), "/mnt/disks/NAMED_MOUNTS/DATA", ""),
        (str(conf.parent), "/mnt/disks/NAMED_MOUNTS/CONF/conf", ""),
        ("/h/x", "/in/x", "ro"),
    ]
    assert named == {
        "DATA": "/mnt/disks/NAMED_MOUNTS/DATA",
        "CONF": "/mnt/disks/NAMED_MOUNTS/CONF/conf/tool.ini",
    }


async def test_mounts_follow_the_rules_of_sanitize_mounts(tmp_path):
    from xqute.utils import sanitize_mounts

    (tmp_path / "f1").write_text("1")
    (tmp_path / "f2").write_text("2")
    specs = [
        f"{tmp_path}:/x",
        f"{tmp_path}/sub/deeper:/x/sub/deeper",  # nested at the same place: dropped
        f"{tmp_path}/:/x/",  # the same mount again: once
        f"N={tmp_path}",
        f"N={tmp_path}/",
        f"{tmp_path}/in:/mnt/disks/NAMED_MOUNTS/N/in",  # inside the named one: dropped
        f"F={tmp_path}/f1",
    ]
    mounts, named = parse_mounts(specs, "/mnt/disks")
    pairs, named_too = await sanitize_mounts(specs, "/mnt/disks")
    assert [(m.host, m.inside) for m in mounts] == [(str(h), str(i)) for h, i in pairs] == [
        (str(tmp_path), "/x"),
        (str(tmp_path), "/mnt/disks/NAMED_MOUNTS/N"),
        (str(tmp_path), f"/mnt/disks/NAMED_MOUNTS/F/{tmp_path.name}"),
    ]
    assert named == named_too == {
        "N": "/mnt/disks/NAMED_MOUNTS/N",
        "F": f"/mnt/disks/NAMED_MOUNTS/F/{tmp_path.name}/f1",
    }
    # options are part of a mount: a read-only one inside a writable one stays
    mounts, _ = parse_mounts([f"{tmp_path}:/x", f"{tmp_path}/ro:/x/ro:ro"], "/mnt/disks")
    assert [m.spec() for m in mounts] == [f"{tmp_path}:/x", f"{tmp_path}/ro:/x/ro:ro"]
    for bad, message in [
        ([f"N={tmp_path}/f1", f"N={tmp_path}/f2"], "Named mount N given twice"),
        (["/a:/x", "/b:/x/"], "Two mounts at '/x' with different host paths"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_mounts(bad, "/mnt/disks")


async def test_apptainer_command_line_as_text(tmp_path, fake_runtime):
    apptainer = fake_runtime("apptainer")
    data = tmp_path / "data"
    data.mkdir()
    sched = ContainerScheduler(
        str(tmp_path / "wd"),
        image="docker://biocontainers/tool:1.0",
        bin=apptainer,
        volumes=[f"DATA={data}", "/ref:/mnt/ref"],
        bin_args=["--cleanenv"],
        remove=True,
    )
    job = await sched.create_job(0, ["echo", "hi"])
    argv = sched.container_command(job)
    wrapper = "/mnt/disks/.xqute/0/job.wrapped.container"
    assert argv == [
        apptainer, "exec", "--pwd", "/mnt/disks/.xqute",
        "--bind", f"{data}:/mnt/disks/NAMED_MOUNTS/DATA",
        "--bind", "/ref:/mnt/ref",
        "--bind", f"{tmp_path / 'wd'}:/mnt/disks/.xqute",
        "--cleanenv",
        "docker://biocontainers/tool:1.0",  # apptainer keeps docker://
        "/bin/bash", wrapper,
    ]
    # the wrapper uses the paths as the container sees them
    script = sched.wrap_job_script(job)
    assert "_xq_meta=/mnt/disks/.xqute/0" in script
    assert "export DATA=/mnt/disks/NAMED_MOUNTS/DATA" in script
    assert job.envs["XQUTE_METADIR"] == "/mnt/disks/.xqute"

    # singularity takes the same command lines; cwd sets --pwd
    sing = ContainerScheduler(
        str(tmp_path / "wd2"), image="tool.sif", bin=fake_runtime("singularity"),
        volumes=f"{tmp_path}:/data", cwd="/data", entrypoint="/usr/bin/env bash",
    )
    job2 = await sing.create_job(1, "true")
    argv2 = sing.container_command(job2)
    # an absolute workdir gets its own mount at /mnt/disks/<DEFAULT_WORKDIR_NAME>,
    # even under a mounted folder (as 2.x clients expect)
    assert argv2 == [
        sing.bin, "exec", "--pwd", "/data", "--bind", f"{tmp_path}:/data",
        "--bind", f"{tmp_path / 'wd2'}:/mnt/disks/.xqute",
        "tool.sif", "/usr/bin/env", "bash", "/mnt/disks/.xqute/1/job.wrapped.container",
    ]
    # a relative workdir is taken inside cwd, through the volume that holds it
    rel = ContainerScheduler(
        "wd3", image="tool.sif", bin=fake_runtime("singularity"),
        volumes=f"{tmp_path}:/data", cwd="/data/sub",
    )
    await rel.post_init()
    assert str(rel.workdir) == str(tmp_path / "sub" / "wd3")
    assert str(rel.workdir.mounted) == "/data/sub/wd3"
    assert rel.volumes == [f"{tmp_path}:/data"]


async def test_docker_command_line_as_text(tmp_path, fake_runtime):
    docker = fake_runtime("docker")
    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="docker://debian:12", bin=docker,
        mounted_workdir="/work", user="1000:1000", remove=False,
        bin_args="--network none",
    )
    job = await sched.create_job(3, "true")
    argv = sched.container_command(job, "the-name")
    assert argv == [
        docker, "run", "--name", "the-name", "--user", "1000:1000",
        "--workdir", "/work", "-v", f"{tmp_path / 'wd'}:/work",
        "--network", "none", "debian:12", "/bin/bash", "/work/3/job.wrapped.container",
    ]
    # names are valid container names and fresh for each trial
    name = sched.container_name(job)
    assert name.startswith("container-") and "-3-t0-" in name
    assert name != sched.container_name(job)


async def test_volume_as_cwd_places_a_relative_workdir_inside_it(tmp_path, fake_runtime):
    project = tmp_path / "project"
    project.mkdir()
    sched = ContainerScheduler(
        "xq", image="i", bin=fake_runtime("podman"), mount_as_cwd=str(project)
    )
    # already on the host side before post_init: the manager creates the workdir
    assert str(sched.workdir) == str(project / "xq")
    await sched.post_init()
    assert str(sched.workdir) == str(project / "xq")
    assert str(sched.workdir.mounted) == "/mnt/disks/.cwd/xq"
    assert sched.cwd == "/mnt/disks/.cwd"
    assert sched.volumes == [f"{project}:/mnt/disks/.cwd"]
    job = await sched.create_job(0, "true")
    argv = sched.container_command(job, "n")
    # only the cwd volume: the workdir is inside it
    assert argv.count("-v") == 1 and f"{project}:/mnt/disks/.cwd" in argv


# ------------------------------------------- what 2.x clients (pipen) rely on
async def test_volumes_are_host_inside_strings_filled_by_post_init(tmp_path, fake_runtime):
    data = tmp_path / "data"
    data.mkdir()
    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="i", bin=fake_runtime("docker"),
        mount=["/ref:/mnt/ref:ro", f"DATA={data}", "/ref:/mnt/ref:ro"],
        mount_as_cwd=str(tmp_path / "proj"),
    )
    assert sched.volumes == []
    await sched.post_init()
    # the cwd folder first, then the volumes (once each), then the workdir
    assert sched.volumes == [
        f"{tmp_path / 'proj'}:/mnt/disks/.cwd",
        "/ref:/mnt/ref:ro",
        f"{data}:/mnt/disks/NAMED_MOUNTS/DATA",
        f"{tmp_path / 'wd'}:/mnt/disks/.xqute",
    ]
    assert all(isinstance(v, str) for v in sched.volumes)


async def test_kwargs_hold_the_container_options_as_given(tmp_path, fake_runtime):
    sched = ContainerScheduler(
        workdir="rel", image="i", bin=fake_runtime("docker"),
        mount=["/a:/b"], mount_as_cwd=str(tmp_path), mounted_workdir="/in/wd", other_opt=1,
    )
    # the 2.x names, whichever alias was used
    assert sched._kwargs["volumes"] == ["/a:/b"]
    assert sched._kwargs["volume_as_cwd"] == str(tmp_path)
    assert sched._kwargs["workdir"] == "rel"
    assert sched._kwargs["mounted_workdir"] == "/in/wd"
    assert sched._kwargs["other_opt"] == 1
    # they are not scheduler directives
    assert "volumes" not in sched.config and sched.config.other_opt == 1
    plain = ContainerScheduler(str(tmp_path / "wd"), image="i", bin=fake_runtime("docker"))
    assert {k: plain._kwargs[k] for k in ("volumes", "volume_as_cwd", "mounted_workdir")} == {
        "volumes": None, "volume_as_cwd": None, "mounted_workdir": None,
    }
    assert plain._kwargs["workdir"] == str(tmp_path / "wd")


async def test_absolute_workdir_goes_to_the_workdir_name_read_at_post_init(
    tmp_path, fake_runtime, monkeypatch
):
    from xqute import defaults

    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="i", bin=fake_runtime("docker"),
        volumes=f"{tmp_path}:/data",  # holds the workdir: it is mounted on its own still
    )
    monkeypatch.setattr(defaults, "DEFAULT_WORKDIR_NAME", ".pipen")  # as pipen does
    await sched.post_init()
    assert str(sched.workdir.mounted) == "/mnt/disks/.pipen"
    assert sched.volumes == [f"{tmp_path}:/data", f"{tmp_path / 'wd'}:/mnt/disks/.pipen"]
    # mounted_workdir wins
    given = ContainerScheduler(
        str(tmp_path / "wd"), image="i", bin=fake_runtime("docker"), mounted_workdir="/w"
    )
    await given.post_init()
    assert str(given.workdir.mounted) == "/w"
    assert given.volumes == [f"{tmp_path / 'wd'}:/w"]


async def test_default_mounted_root_is_a_class_attribute_read_through_self(tmp_path, fake_runtime):
    assert ContainerScheduler.DEFAULT_MOUNTED_ROOT == "/mnt/disks"

    class Elsewhere(ContainerScheduler):
        DEFAULT_MOUNTED_ROOT = "/elsewhere"

    sched = Elsewhere(
        "rel", image="i", bin=fake_runtime("docker"),
        volume_as_cwd=str(tmp_path), volumes=f"DATA={tmp_path}",
    )
    await sched.post_init()
    assert sched.cwd == "/elsewhere/.cwd"
    assert str(sched.workdir.mounted) == "/elsewhere/.cwd/rel"
    assert f"{tmp_path}:/elsewhere/NAMED_MOUNTS/DATA" in sched.volumes


async def test_post_init_runs_once_and_keeps_what_the_client_changed(tmp_path, fake_runtime):
    extra = tmp_path / "extra"
    sched = ContainerScheduler(
        str(tmp_path / "wd"), image="i", bin=fake_runtime("docker"), volumes="/a:/b"
    )
    # what pipen does: post_init, set the flag, move the workdir, add a volume
    await sched.post_init()
    sched._post_init_called = True
    sched.workdir = sched.workdir / "proc"
    sched.volumes.append(f"{extra}:/mnt/disks/out")
    before = list(sched.volumes)
    await sched.post_init()  # a second call changes nothing
    assert sched.volumes == before
    assert len(sched.volumes) == len(set(sched.volumes)) == 3
    job = await sched.create_job(0, "true")
    assert str(job.metadir) == str(tmp_path / "wd" / "proc" / "0")
    assert str(job.metadir.mounted) == "/mnt/disks/.xqute/proc/0"
    assert sched.volumes == before


async def test_volumes_appended_after_post_init_are_on_the_next_command_line(tmp_path, fake_runtime):
    data = tmp_path / "data"
    data.mkdir()
    sched = ContainerScheduler(str(tmp_path / "wd"), image="i", bin=fake_runtime("docker"))
    job = await sched.create_job(0, "true")
    first = sched.container_command(job, "n")
    assert first.count("-v") == 1
    sched.volumes.append(f"{tmp_path}/out:/mnt/disks/out")
    sched.volumes.append(f"{tmp_path}/out:/mnt/disks/out")  # the same twice: once
    sched.volumes.append(f"LATE={data}")  # a named one: mounted, and $LATE exported
    argv = sched.container_command(job, "n")
    assert argv.count("-v") == 3
    assert f"{tmp_path}/out:/mnt/disks/out" in argv
    assert f"{data}:/mnt/disks/NAMED_MOUNTS/LATE" in argv
    assert "export LATE=/mnt/disks/NAMED_MOUNTS/LATE" in sched.wrap_job_script(job)


async def test_a_nested_volume_is_not_mounted_but_its_host_folder_is_made(tmp_path, fake_runtime):
    sched = ContainerScheduler(str(tmp_path / "wd"), image="i", bin=fake_runtime("podman"))
    job = await sched.create_job(0, "true")
    proj = tmp_path / "proj"
    sched.volumes += [f"{proj}:/mnt/proj", f"{proj}/out:/mnt/proj/out"]
    argv = sched.container_command(job, "n")
    # the outer volume already shows proj/out at /mnt/proj/out
    assert f"{proj}:/mnt/proj" in argv and f"{proj}/out:/mnt/proj/out" not in argv
    sched._make_host_folders()
    assert (proj / "out").is_dir()


async def test_a_bad_volume_appended_later_fails_the_submission_clearly(tmp_path, fake_runtime):
    from xqute.scheduler import SubmissionError

    sched = ContainerScheduler(str(tmp_path / "wd"), image="i", bin=fake_runtime("docker"))
    job = await sched.create_job(0, "true")
    sched.volumes.append("/x:/mnt/disks/.xqute")  # over the workdir's mount
    with pytest.raises(SubmissionError, match="Two mounts at '/mnt/disks/.xqute'"):
        await sched.submit_job(job)
    sched.volumes[-1] = "not-a-volume"
    with pytest.raises(SubmissionError, match="Invalid mount"):
        await sched.submit_job(job)


async def test_a_bad_volume_fails_the_jobs_after_it_with_the_reason_in_stderr(tmp_path, fake_runtime):
    # the runtime is never reached: the command line cannot be built
    xq = Xqute("container", workdir=tmp_path / "wd",
               scheduler_opts=dict(image="i", bin=fake_runtime("docker")))
    await xq.scheduler.post_init()
    xq.scheduler._post_init_called = True
    xq.scheduler.volumes.append("/x:/mnt/disks/.xqute")
    await xq.feed(["true"])
    await xq.run_until_complete()
    job = xq.jobs[0]
    assert await job.get_rc() == -2
    assert "Two mounts at '/mnt/disks/.xqute'" in read(job.stderr_file)


# ------------------------------------------------------------ real podman
@pytest.mark.parametrize("runtime", runtime_bins())
async def test_output_and_rc_through_a_real_runtime(workdir, image, runtime):
    need_bin(runtime)
    xq = await run_jobs(
        workdir,
        [
            ["bash", "-c", 'echo "hello from $(pwd)"; echo warn >&2'],
            ["bash", "-c", "echo failing; exit 3"],
            ["no-such-command-here"],
        ],
        image=image,
        bin=runtime,
        forks=3,
    )
    ok, bad, missing = xq.jobs
    assert read(ok.stdout_file) == "hello from /mnt/disks/.xqute\n"
    assert read(ok.stderr_file) == "warn\n"
    assert await ok.get_rc() == 0
    assert await ok.get_status(refresh=True) == JobStatus.FINISHED
    assert read(bad.stdout_file) == "failing\n"
    assert await bad.get_rc() == 3
    assert await bad.get_status(refresh=True) == JobStatus.FAILED
    assert await missing.get_rc() == 127
    # the job id is the container's name, and --rm removed it
    prefix = xq.scheduler.jobname_prefix
    assert read(ok.jid_file).strip().startswith(prefix)
    assert containers(prefix) == []


async def test_environment_variables_reach_the_job_inside(workdir, image):
    xq = await run_jobs(
        workdir,
        # a string command is a shell line: the shell reads the variables, and
        # their values arrive as given (a list argument would get $NAME expanded
        # into its text before bash -c parses it)
        ['printf "%s|%s|%s|%s\\n" "$GREETING" "$QUOTED" "$XQUTE_JOB_INDEX" "$XQUTE_JOB_METADIR"'],
        envs={"GREETING": "hello world", "QUOTED": "it's \"quoted\" $HOME"},
        image=image,
        bin="podman",
    )
    assert read(xq.jobs[0].stdout_file) == (
        "hello world|it's \"quoted\" $HOME|0|/mnt/disks/.xqute/0\n"
    )


async def test_named_mounts_and_plain_volumes(workdir, image, tmp_path):
    data = tmp_path / "in data"
    data.mkdir()
    (data / "numbers.txt").write_text("1\n2\n3\n")
    config = tmp_path / "cfg" / "settings.ini"
    config.parent.mkdir()
    config.write_text("answer=42\n")
    out = tmp_path / "out"
    out.mkdir()
    xq = await run_jobs(
        workdir,
        [["bash", "-c", 'wc -l < "$DATA/numbers.txt"; cat "$SETTINGS"; echo "$DATA"; echo made > /results/made.txt']],
        image=image,
        bin="podman",
        volumes=[f"DATA={data}", f"SETTINGS={config}", f"{out}:/results"],
    )
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    assert read(job.stdout_file) == "3\nanswer=42\n/mnt/disks/NAMED_MOUNTS/DATA\n"
    assert (out / "made.txt").read_text() == "made\n"


async def test_a_volume_appended_after_post_init_is_mounted_in_the_container(
    workdir, image, tmp_path, monkeypatch
):
    from xqute import defaults

    monkeypatch.setattr(defaults, "DEFAULT_WORKDIR_NAME", ".pipen")  # set by the client
    out = tmp_path / "pipeline output"
    out.mkdir()
    (out / "from-host.txt").write_text("seen inside\n")
    xq = Xqute(
        "container", workdir=workdir, jobname_prefix=unique_prefix(),
        scheduler_opts=dict(image=image, bin="podman"),
    )
    sched = xq.scheduler
    # what pipen's init_proc does: post_init, the flag, then its output folder
    await sched.post_init()
    sched._post_init_called = True
    sched.volumes.append(f"{out}:/mnt/disks/.pipen-output")
    # a host folder nothing made yet: created, as docker would (podman refuses it)
    later = tmp_path / "not made" / "yet"
    sched.volumes.append(f"{later}:/mnt/disks/later")
    await xq.feed([
        "bash", "-c",
        'cat /mnt/disks/.pipen-output/from-host.txt; echo "$XQUTE_JOB_METADIR"; '
        "echo written > /mnt/disks/.pipen-output/from-job.txt; echo too > /mnt/disks/later/f",
    ])
    await xq.run_until_complete()
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    assert read(job.stdout_file) == "seen inside\n/mnt/disks/.pipen/0\n"
    assert (out / "from-job.txt").read_text() == "written\n"
    assert (later / "f").read_text() == "too\n"
    # mounted once: post_init did not run again and add the workdir twice
    assert sched.volumes == [
        f"{workdir}:/mnt/disks/.pipen", f"{out}:/mnt/disks/.pipen-output", f"{later}:/mnt/disks/later"
    ]


async def test_mount_as_cwd_runs_jobs_in_the_mounted_folder(image, tmp_path, monkeypatch):
    project = tmp_path / "my project"
    project.mkdir()
    (project / "input.txt").write_text("from the host\n")
    monkeypatch.chdir(tmp_path)  # a relative workdir must not land here
    xq = await run_jobs(
        "wd",
        [["bash", "-c", "pwd; cat input.txt; echo out > output.txt"]],
        image=image,
        bin="podman",
        mount_as_cwd=str(project),
    )
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    assert read(job.stdout_file) == "/mnt/disks/.cwd\nfrom the host\n"
    assert (project / "output.txt").read_text() == "out\n"
    # the relative workdir was taken inside the mounted folder
    assert Path(job.metadir) == project / "wd" / "0"
    assert not (tmp_path / "wd").exists()


async def test_timeout_option_stops_the_job_inside_the_container(workdir, image):
    xq = await run_jobs(
        workdir, [["sleep", "30"]], image=image, bin="podman", timeout=1
    )
    job = xq.jobs[0]
    assert await job.get_rc() == 124
    assert "timed out" in read(job.stderr_file)


async def test_an_image_that_does_not_exist_fails_the_job_with_the_runtime_error(workdir, image):
    xq = await run_jobs(
        workdir, [["true"]], image="localhost/xqute-no-such-image:none", bin="podman",
        bin_args=["--pull", "never"],
    )
    job = xq.jobs[0]
    assert await job.get_rc() == -3
    assert await job.get_status(refresh=True) == JobStatus.FAILED
    stderr = read(job.stderr_file)
    assert "podman run exited with 125" in stderr
    assert "xqute-no-such-image" in stderr  # podman's own message
    assert (Path(job.metadir) / CLIENT_LOG_NAME).is_file()


async def test_remove_false_keeps_the_container(workdir, image):
    prefix = unique_prefix()
    xq = await run_jobs(
        workdir, [["true"]], image=image, bin="podman", remove=False, jobname_prefix=prefix
    )
    name = read(xq.jobs[0].jid_file).strip()
    try:
        left = containers(prefix)
        assert len(left) == 1 and left[0].startswith(f"{name} Exited (0)")
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, timeout=60)


async def test_halt_kills_the_other_running_containers(workdir, image):
    prefix = unique_prefix()
    xq = await run_jobs(
        workdir,
        [["bash", "-c", "sleep 1; exit 2"], ["sleep", "300"]],
        image=image,
        bin="podman",
        error_strategy="halt",
        jobname_prefix=prefix,
    )
    first, long = xq.jobs
    assert await first.get_rc() == 2
    assert await long.get_rc() == 143
    assert "terminated (SIGTERM)" in read(long.stderr_file)
    assert containers(prefix) == []


MANAGER = textwrap.dedent(
    """
    import asyncio, sys
    from xqute import Xqute
    workdir, image, runtime, prefix, njobs = sys.argv[1:6]
    async def main():
        xq = Xqute("container", workdir=workdir, forks=2, jobname_prefix=prefix,
                   scheduler_opts=dict(image=image, bin=runtime))
        for _ in range(int(njobs)):
            await xq.feed(["bash", "-c", "echo started; sleep 300"])
        await xq.run_until_complete()
        print("manager done")
    asyncio.run(main())
    """
)


def start_manager(workdir, image, runtime, prefix, njobs=3) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", MANAGER, str(workdir), image, runtime, prefix, str(njobs)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for(predicate, what: str, limit: float = 120.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.mark.parametrize("runtime", runtime_bins())
def test_sigterm_to_the_manager_stops_the_running_containers(workdir, image, runtime):
    need_bin(runtime)
    prefix = unique_prefix()
    manager = start_manager(workdir, image, runtime, prefix)
    try:
        # both forks' jobs have started inside their containers
        wait_for(
            lambda: all(
                (workdir / str(i) / "job.stdout").is_file()
                and read(workdir / str(i) / "job.stdout") == "started\n"
                for i in (0, 1)
            ),
            "two jobs to start",
        )
        running = containers(prefix)
        assert len(running) == 2 and all(" Up " in f" {c} " for c in running), running
        manager.send_signal(signal.SIGTERM)
        out, _ = manager.communicate(timeout=120)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait()
    assert manager.returncode == 0, out
    assert "manager done" in out
    assert containers(prefix) == []  # checked with podman itself, whatever the CLI
    for i in (0, 1):
        assert int(read(workdir / str(i) / "job.rc")) == 143
        assert int(read(workdir / str(i) / "job.status")) == JobStatus.FAILED
    # the third job was never started
    assert not (workdir / "2" / "job.jid").exists()


async def test_a_new_manager_follows_a_container_left_by_a_killed_one(workdir, image):
    prefix = unique_prefix()
    flag = workdir / "flag"
    first = subprocess.Popen(
        [sys.executable, "-c", MANAGER.replace("sleep 300", "while [ ! -e /mnt/disks/.xqute/flag ]; do sleep 0.1; done"),
         str(workdir), image, "podman", prefix, "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(lambda: (workdir / "0" / "job.stdout").is_file() and read(workdir / "0" / "job.stdout"), "the job to start")
    finally:
        first.kill()  # SIGKILL: no chance to stop its containers
        first.wait()
    name = read(workdir / "0" / "job.jid").strip()
    assert any(c.startswith(name) for c in containers(prefix))

    xq = Xqute("container", workdir=workdir, jobname_prefix=prefix,
               scheduler_opts=dict(image=image, bin="podman"))
    await xq.feed(["bash", "-c", "echo started; sleep 300"])

    async def release_later():
        await asyncio.sleep(0.5)
        flag.write_text("")

    release = asyncio.ensure_future(release_later())
    await xq.run_until_complete()
    await release
    job = xq.jobs[0]
    # the same container ran to its end: not started again
    assert read(job.jid_file).strip() == name
    assert read(job.stdout_file) == "started\n"
    assert await job.get_rc() == 0
    assert containers(prefix) == []


async def test_a_container_killed_from_outside_fails_its_job_with_the_reason(workdir, image):
    prefix = unique_prefix()
    xq = Xqute("container", workdir=workdir, jobname_prefix=prefix,
               scheduler_opts=dict(image=image, bin="podman"))
    await xq.feed(["bash", "-c", "echo started; sleep 300"])
    await xq.run_until_complete(keep_feeding=True)
    job = xq.jobs[0]

    def started() -> bool:
        return job.stdout_file.is_file() and read(job.stdout_file) == "started\n"

    for _ in range(1200):  # up to 2 minutes on a very busy machine
        if started():
            break
        await asyncio.sleep(0.1)
    assert started(), read(Path(job.metadir) / CLIENT_LOG_NAME)
    name = read(job.jid_file).strip()
    # SIGKILL from outside: the wrapper gets no chance to record anything
    killed = subprocess.run(["podman", "kill", "--signal", "KILL", name],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == 0, killed.stderr
    await xq.stop_feeding()
    assert await job.get_rc() == -3
    assert await job.get_status(refresh=True) == JobStatus.FAILED
    assert "podman run exited with 137 before the job recorded its return code" in read(job.stderr_file)
    assert containers(prefix) == []
