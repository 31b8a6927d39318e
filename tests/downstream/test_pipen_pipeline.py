"""One real pipen 1.2.4 pipeline, run through pipen's own scheduler classes
(``scheduler="slurm"`` etc. resolve to pipen/scheduler.py's subclasses of ours)
against every real part this machine brings up: local, Slurm, Grid Engine, ssh
(both hosts), podman (container scheduler) and the loopback Batch API with the
real gcloud (gbatch, workdir and outdir on the GCS emulator).

The pipeline: three processes of four jobs each; the output files of one are
the input files of the next (``MakeFiles -> Upper -> Combine``, Combine also
takes MakeFiles' files); job 1 of ``Upper`` fails on its first trial (it leaves
a marker file) and passes on the retry.  Each test runs the pipeline twice: the
first run must submit every job (the failing one twice), the second must take
every job from pipen's cache and submit none.  Afterwards nothing may be left
running: no job in the scheduler, no process, no container, no ssh master.

Each scheduler's test is gated on its real part like tests/realparts.py does:
skipped with the reason where the part is down, failed under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from panpath import PanPath
from pipen import Pipen, Proc, plugin

from tests.conftest import processes_with
from tests.realparts import IN_CI, part_env, require
from xqute import JobStatus

NAMES = ["alpha", "beta", "gamma", "delta"]
PROCS = ["MakeFiles", "Upper", "Combine"]
RETRIED = ("Upper", 1)  # the job that fails once
FAIL_RC = 3
RUN_LIMIT = 900  # seconds; a pipeline run that takes longer is hung


# ------------------------------------------------------------------ pipeline
class Recorder:
    """What pipen's job hooks saw during one run."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []
        self.jids: dict[tuple[str, int], list[str]] = {}
        self.socket_dirs: set[str] = set()
        self.scheduler_classes: set[type] = set()
        self.procs_done: dict[str, object] = {}

    def count(self, hook: str, proc: str | None = None, index: int | None = None) -> int:
        return sum(
            1
            for h, p, i in self.events
            if h == hook and (proc is None or p == proc) and (index is None or i == index)
        )

    def all_jids(self) -> list[str]:
        return [jid for jids in self.jids.values() for jid in jids]


def recorder_plugin(rec: Recorder):
    """A pipen plugin (unique name) that records job hooks into ``rec``."""

    class DownstreamRecorder:
        name = f"ds_recorder_{uuid.uuid4().hex[:8]}"

        @plugin.impl
        async def on_job_submitted(job):
            rec.events.append(("submitted", job.proc.name, job.index))
            rec.jids.setdefault((job.proc.name, job.index), []).append(
                str(await job.get_jid())
            )
            # the ssh scheduler's private folder of connection sockets
            socket_dir = getattr(job.proc.xqute.scheduler, "socket_dir", None)
            if socket_dir:
                rec.socket_dirs.add(str(socket_dir))

        @plugin.impl
        async def on_proc_start(proc):
            rec.scheduler_classes.add(type(proc.xqute.scheduler))

        @plugin.impl
        async def on_proc_done(proc, succeeded):
            rec.procs_done[proc.name] = succeeded

        @plugin.impl
        async def on_job_cached(job):
            rec.events.append(("cached", job.proc.name, job.index))

        @plugin.impl
        async def on_job_succeeded(job):
            rec.events.append(("succeeded", job.proc.name, job.index))

        @plugin.impl
        async def on_job_failed(job):
            rec.events.append(("failed", job.proc.name, job.index))

    return DownstreamRecorder()


UPPER_SCRIPT = """
{% if job.index == 1 %}
marker="{{job.metadir}}/../upper-1.failed-once"
if [ ! -e "$marker" ]; then
    echo "first trial" > "$marker"
    echo "Upper job 1 fails on its first trial, on purpose" >&2
    exit @RC@
fi
{% endif %}
tr a-z A-Z < "{{in.infile}}" > "{{out.out}}"
""".replace("@RC@", str(FAIL_RC))


def build_pipeline(
    name: str,
    workdir: str,
    outdir: str,
    scheduler: str,
    scheduler_opts: dict,
    rec: Recorder,
) -> Pipen:
    """Fresh Proc classes each time (pipen keeps state on them), same names, so
    a second build of the same pipeline finds the first one's cache."""

    class MakeFiles(Proc):
        """One small file per job."""

        input = "name:var"
        input_data = NAMES
        output = "out:file:{{in.name}}.txt"
        script = 'echo "{{in.name}}" > "{{out.out}}"'

    class Upper(Proc):
        """The file of MakeFiles in capitals; job 1 fails once."""

        requires = MakeFiles
        input = "infile:file"
        output = "out:file:{{in.infile.stem}}.upper.txt"
        error_strategy = "retry"
        num_retries = 2
        script = UPPER_SCRIPT

    class Combine(Proc):
        """Both earlier files of the same name, and which job did it."""

        requires = [MakeFiles, Upper]
        input = "orig:file, upper:file"
        output = "out:file:{{in.orig.stem}}.final.txt"
        script = (
            'cat "{{in.orig}}" "{{in.upper}}" > "{{out.out}}"; '
            'echo "combined by job {{job.index}}" >> "{{out.out}}"'
        )

    return Pipen(
        name=name,
        desc="xqute downstream check",
        workdir=workdir,
        outdir=outdir,
        scheduler=scheduler,
        scheduler_opts=scheduler_opts,
        plugins=[recorder_plugin(rec)],
        forks=4,
        cache=True,
        loglevel="info",
    ).set_starts(MakeFiles)


# ---------------------------------------------------------------- checking
async def read(path) -> str:
    return await PanPath(str(path)).a_read_text()


async def exists(path) -> bool:
    return await PanPath(str(path)).a_exists()


def metadir(workdir: str, name: str, proc: str, index: int) -> str:
    return f"{workdir}/{name}/{proc}/{index}"


async def meta_snapshot(workdir: str, name: str) -> dict:
    """(content, mtime_ns when local) of the job.jid (2.x's wrapper renames it to
    job.jid.used at the end) and job.rc files of every job: a job submitted
    again would rewrite them.  (pipen itself rewrites job.status of a cached
    job, with the same FINISHED.)"""
    snap = {}
    for proc in PROCS:
        for index in range(len(NAMES)):
            mdir = metadir(workdir, name, proc, index)
            files = sorted(
                [
                    str(p).rstrip("/")
                    async for p in PanPath(mdir).a_iterdir()
                    if PanPath(str(p).rstrip("/")).name.startswith(
                        ("job.jid", "job.rc")
                    )
                ]
            )
            names = [PanPath(f).name for f in files]
            assert any(n.startswith("job.jid") for n in names), (mdir, names)
            for path in files:
                mtime = None if "://" in path else os.stat(path).st_mtime_ns
                snap[path] = ((await read(path)).strip(), mtime)
    return snap


def check_scheduler_class(scheduler: str, rec: Recorder) -> None:
    """pipen's own subclass of ours (pipen/scheduler.py) ran every process."""
    import pipen.scheduler
    from xqute.schedulers import get_scheduler as xqute_scheduler

    expected = pipen.scheduler.get_scheduler(scheduler)
    assert rec.scheduler_classes == {expected}, rec.scheduler_classes
    assert expected.__module__ == "pipen.scheduler"
    assert issubclass(expected, xqute_scheduler(scheduler))


async def check_first_run(workdir: str, outdir: str, name: str, rec: Recorder) -> None:
    assert rec.procs_done == {proc: True for proc in PROCS}, rec.procs_done
    # every job submitted once, the failing one twice; every job succeeded once
    for proc in PROCS:
        for index in range(len(NAMES)):
            expected = 2 if (proc, index) == RETRIED else 1
            assert rec.count("submitted", proc, index) == expected, (proc, index, rec.events)
            assert rec.count("succeeded", proc, index) == 1, (proc, index, rec.events)
            assert rec.count("cached", proc, index) == 0, (proc, index, rec.events)
            mdir = metadir(workdir, name, proc, index)
            assert (await read(f"{mdir}/job.status")).strip() == str(int(JobStatus.FINISHED))
            assert (await read(f"{mdir}/job.rc")).strip() == "0"
    # the first trial of the retried job is kept, with its return code and message
    mdir = metadir(workdir, name, *RETRIED)
    trials = [p async for p in PanPath(f"{mdir}/job.retry").a_iterdir()]
    assert len(trials) == 1, trials
    trial = str(trials[0]).rstrip("/")
    assert (await read(f"{trial}/job.rc")).strip() == str(FAIL_RC)
    assert "fails on its first trial, on purpose" in await read(f"{trial}/job.stderr")
    # files went from process to process; the last one's are in the outdir
    for index, word in enumerate(NAMES):
        upper = f"{metadir(workdir, name, 'Upper', index)}/output/{word}.upper.txt"
        assert await read(upper) == word.upper() + "\n"
        final = f"{outdir}/Combine/{index}/{word}.final.txt"
        assert await read(final) == f"{word}\n{word.upper()}\ncombined by job {index}\n"


def check_cached_run(rec: Recorder) -> None:
    assert rec.procs_done == {proc: "cached" for proc in PROCS}, rec.procs_done
    assert rec.count("submitted") == 0, rec.events
    for proc in PROCS:
        for index in range(len(NAMES)):
            assert rec.count("cached", proc, index) == 1, (proc, index, rec.events)


def check_nothing_left(markers: list[str], rec: Recorder) -> None:
    """No process whose command line names our folders, no ssh master left."""
    for marker in markers:
        assert processes_with(marker) == [], marker
    for folder in rec.socket_dirs:
        assert not os.path.exists(folder), folder
        assert processes_with(folder) == [], folder


async def run_twice(
    scheduler: str,
    workdir: str,
    outdir: str,
    scheduler_opts: dict,
    wall_times: dict,
    label: str | None = None,
) -> tuple[Recorder, Recorder]:
    """The pipeline, then the same again from pipen's cache; checks both."""
    label = label or scheduler
    name = f"ds_{label}"
    first = Recorder()
    start = time.monotonic()
    ok = await asyncio.wait_for(
        build_pipeline(name, workdir, outdir, scheduler, scheduler_opts, first).async_run(),
        RUN_LIMIT,
    )
    wall_first = time.monotonic() - start
    assert ok, "the first run of the pipeline failed"
    check_scheduler_class(scheduler, first)
    await check_first_run(workdir, outdir, name, first)
    meta_before = await meta_snapshot(workdir, name)

    second = Recorder()
    start = time.monotonic()
    ok = await asyncio.wait_for(
        build_pipeline(name, workdir, outdir, scheduler, scheduler_opts, second).async_run(),
        RUN_LIMIT,
    )
    wall_second = time.monotonic() - start
    assert ok, "the cached rerun of the pipeline failed"
    check_cached_run(second)
    assert await meta_snapshot(workdir, name) == meta_before  # no meta file touched
    # the outputs are still there, unchanged
    await check_first_run(workdir, outdir, name, first)

    wall_times[label] = {"first run": wall_first, "cached rerun": wall_second}
    print(
        f"\n[downstream] pipen pipeline on {label}: first run {wall_first:.1f} s, "
        f"cached rerun {wall_second:.1f} s"
    )
    return first, second


def cli(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def use_part(part: str, monkeypatch) -> dict[str, str]:
    """Skip (fail under CI=true) unless the part is up; its client env set."""
    require(part)
    env = part_env(part)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


GONE_WITHIN = 30.0  # seconds


async def wait_gone(label: str, listed) -> None:
    """``listed()`` gives {job id: state} of our jobs the scheduler still holds.
    A job whose wrapper has written its return code (pipen saw it end) may stay
    listed a moment while the scheduler tears it down (e.g. Grid Engine's
    shepherd, Slurm's COMPLETING); one still listed after GONE_WITHIN seconds was
    left behind."""
    seen = await asyncio.to_thread(listed)
    start = time.monotonic()
    left = seen
    while left and time.monotonic() - start < GONE_WITHIN:
        await asyncio.sleep(0.2)
        left = await asyncio.to_thread(listed)
    if seen:
        print(
            f"[downstream] {label}: still listed right after the run: {seen}; "
            f"gone after {time.monotonic() - start:.1f} s"
        )
    assert left == {}, f"{label}: jobs left after {GONE_WITHIN:.0f} s: {left}"


# -------------------------------------------------------------------- tests
async def test_local(tmp_path, wall_times):
    first, _ = await run_twice(
        "local", str(tmp_path / "wd"), str(tmp_path / "out"), {}, wall_times
    )
    check_nothing_left([str(tmp_path)], first)


async def test_slurm(tmp_path, wall_times, monkeypatch):
    use_part("slurm", monkeypatch)
    first, _ = await run_twice(
        "slurm", str(tmp_path / "wd"), str(tmp_path / "out"), {}, wall_times
    )
    jids = first.all_jids()
    # each process's 4 jobs went out as one array (<array id>_<task>); the
    # retried job alone, as a plain job
    assert len(jids) == 13 and all(re.fullmatch(r"[0-9]+(_[0-9]+)?", j) for j in jids), jids
    assert len({j.split("_")[0] for j in jids if "_" in j}) == 3, jids

    def listed() -> dict[str, str]:
        # -r: one line per array task, pending ones included
        out = cli("squeue", "-r", "-h", "-t", "PD,R,CG,S,CF", "-o", "%i %T")
        return {i: st for i, st in (line.split() for line in out.splitlines()) if i in jids}

    await wait_gone("slurm", listed)
    check_nothing_left([str(tmp_path)], first)


async def test_sge(tmp_path, wall_times, monkeypatch):
    use_part("sge", monkeypatch)
    first, _ = await run_twice(
        "sge", str(tmp_path / "wd"), str(tmp_path / "out"), {}, wall_times
    )
    jids = first.all_jids()
    # each process's 4 jobs went out as one array (<job number>.<task>); the
    # retried job alone, as a plain job
    assert len(jids) == 13 and all(re.fullmatch(r"[0-9]+(\.[0-9]+)?", j) for j in jids), jids
    assert len({j.split(".")[0] for j in jids if "." in j}) == 3, jids
    numbers = {j.split(".")[0] for j in jids}

    def listed() -> dict[str, str]:
        root = ET.fromstring(cli("qstat", "-xml", "-u", "*"))
        return {
            e.findtext("JB_job_number"): e.findtext("state")
            for e in root.iter("job_list")
            if e.findtext("JB_job_number") in numbers
        }

    await wait_gone("sge", listed)
    check_nothing_left([str(tmp_path)], first)


@pytest.fixture
def ssh_shared():
    """A folder on the ssh hosts' shared file system where their user can write."""
    require("ssh")
    env = part_env("ssh")
    top = Path(env["XQUTE_SSH_SHARED_DIR"]) / f"downstream-{uuid.uuid4().hex[:10]}"
    os.makedirs(top)  # not mkdtemp: its mode 0700 would mask the default ACLs
    yield env, top
    shutil.rmtree(top, ignore_errors=True)


async def test_ssh_both_hosts(ssh_shared, wall_times):
    env, top = ssh_shared
    hosts = [env["XQUTE_SSH_HOST1"], env["XQUTE_SSH_HOST2"]]
    opts = {
        "servers": {
            env[f"XQUTE_SSH_HOST{i}"]: {
                "port": int(env[f"XQUTE_SSH_PORT{i}"]),
                "user": env["XQUTE_SSH_USER"],
                "keyfile": env["XQUTE_SSH_KEY"],
            }
            for i in (1, 2)
        },
        "ssh_args": ["-o", f"UserKnownHostsFile={env['XQUTE_SSH_KNOWN_HOSTS']}"],
    }
    first, _ = await run_twice("ssh", str(top / "wd"), str(top / "out"), opts, wall_times)
    used = {jid.partition("@")[2] for jid in first.all_jids()}
    assert used == set(hosts), first.jids  # the jobs ran on both hosts
    assert first.socket_dirs, "the ssh scheduler made no connection folder"
    # this machine's /proc shows host 2's processes too
    check_nothing_left([str(top)], first)


@pytest.mark.parametrize("runtime", ["podman", "docker"], ids=["podman", "docker-cli"])
async def test_container(tmp_path, wall_times, monkeypatch, runtime):
    """podman's own CLI, and the docker CLI talking to ``podman system service``
    (DOCKER_HOST from scripts/podman.sh env)."""
    env = use_part("podman", monkeypatch)
    if not shutil.which(runtime):
        msg = f"the {runtime} CLI is not installed here"
        if IN_CI:
            pytest.fail(msg + "; CI=true, so this must run")
        pytest.skip(msg)
    opts = {"image": env["XQUTE_TEST_IMAGE"], "bin": runtime}
    first, _ = await run_twice(
        "container", str(tmp_path / "wd"), str(tmp_path / "out"), opts, wall_times,
        label=f"container-{runtime}",
    )
    jids = first.all_jids()
    assert len(jids) == 13, first.jids

    def listed() -> dict[str, str]:
        out = cli("podman", "ps", "-a", "--format", "{{.Names}} {{.State}}")
        return {n: st for n, _, st in (l.partition(" ") for l in out.splitlines()) if n in jids}

    await wait_gone(f"container-{runtime}", listed)  # ended and removed (--rm)
    check_nothing_left([str(tmp_path)], first)


async def test_gbatch(wall_times, monkeypatch):
    require("stores")
    env = use_part("gbatch", monkeypatch)
    for key, value in part_env("stores").items():
        monkeypatch.setenv(key, value)
    run_id = f"pipen-{uuid.uuid4().hex[:10]}"
    base = f"gs://{env['XQUTE_TEST_BUCKET']}/downstream/{run_id}"
    opts = {
        "project": env["CLOUDSDK_CORE_PROJECT"],
        "location": env["CLOUDSDK_BATCH_LOCATION"],
        "poll_interval": 0.5,
        "query_interval": 1,
        "end_grace": 1,
    }
    first, _ = await run_twice("gbatch", f"{base}/wd", f"{base}/out", opts, wall_times)
    jids = first.all_jids()
    assert len(jids) == 13, first.jids

    def listed() -> dict[str, str]:
        states = {}
        # a member of an array is <Batch job name>:<task>; ask about the Batch job
        for jid in {jid.split(":")[0] for jid in jids}:
            url = (
                f"{env['FAKE_BATCH_API']}/v1/projects/{env['CLOUDSDK_CORE_PROJECT']}"
                f"/locations/{env['CLOUDSDK_BATCH_LOCATION']}/jobs/{jid}"
            )
            try:
                with urllib.request.urlopen(url, timeout=30) as answer:
                    state = json.loads(answer.read())["status"]["state"]
            except urllib.error.HTTPError as err:
                assert err.code == 404, err
                continue  # deleted: nothing left of it
            if state not in ("SUCCEEDED", "FAILED", "CANCELLED"):
                states[jid] = state
        return states

    await wait_gone("gbatch", listed)
    check_nothing_left([run_id], first)
