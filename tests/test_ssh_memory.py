"""Memory on the ssh scheduler, against the two real sshd hosts of
scripts/ssh.sh: a memory cgroup per trial made on the remote side where the
remote user may make one (its limit enforced, its peak recorded, an OOM kill
read as cause ``oom``), and where not, ``ulimit -S -d`` as best effort (cause
``oom`` from an allocation error in the job's stderr) and no peak.

The test hosts' user (``xqute-ssh``, not root) may make no cgroup by itself:
the memory hierarchy is root's. As an administrator delegates a subtree, the
``delegated`` fixture (this test process is root) makes a cgroup folder owned
by that user on host 1 and names it with the ``cgroup_dir`` option. Host 2
runs in a network namespace whose /sys has no cgroup file system mounted, so
its jobs always get the best-effort limit.
"""

from __future__ import annotations

import json
import os
import pwd
import uuid

import pytest

from tests.realparts import IN_CI
from tests.test_ssh import (  # noqa: F401 - fixtures
    env,
    known_hosts_args,
    make_xqute,
    read,
    run,
    servers,
    shared_workdir,
)
from xqute.schedulers.local_scheduler import _memory_hierarchy

# holds 200 MB for a second (bytearray touches every page)
HOLD_200MB = 'import time; b = bytearray(200 * 1024 * 1024); time.sleep(1)'


def unavailable(message: str):
    if IN_CI:
        pytest.fail(message + "; CI=true, so this must run")
    pytest.skip(message)


@pytest.fixture
def delegated(env):
    """A memory cgroup folder (v1) on host 1 that the test hosts' user may
    make cgroups in: the folder and its cgroup.procs and tasks are the user's,
    as an administrator delegates one. Removed afterwards with whatever is
    left in it."""
    if os.geteuid() != 0:
        unavailable("making a cgroup folder for the ssh test user needs root")
    where = _memory_hierarchy()
    if isinstance(where, str):
        unavailable(f"no memory cgroup hierarchy here: {where}")
    version, point, path = where
    if version != 1:
        # v2 lets a process move only where it may write the cgroup.procs of
        # the common ancestor of both cgroups: root's, for the test user's
        # ssh session, unless the sshd itself ran in the delegated subtree
        unavailable(
            "memory is on cgroup v2 here: the ssh test user's session could not "
            "join a cgroup delegated from root (v2's common-ancestor rule)"
        )
    place = os.path.normpath(point + "/" + path.lstrip("/"))
    folder = os.path.join(place, f"xqute-test-ssh-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(folder)
    except OSError as exc:
        unavailable(f"cannot make the cgroup {folder}: {exc}")
    try:
        user = pwd.getpwnam(env["XQUTE_SSH_USER"])
        for name in ("", "cgroup.procs", "tasks"):
            os.chown(os.path.join(folder, name), user.pw_uid, user.pw_gid)
    except OSError as exc:
        _remove_tree(folder)
        unavailable(f"cannot delegate the cgroup {folder} to the test user: {exc}")
    yield folder
    _remove_tree(folder)


def _remove_tree(folder: str) -> None:
    """rmdir a cgroup tree, deepest first (a cgroup's files cannot be removed)."""
    for top, dirs, _ in sorted(os.walk(folder), key=lambda e: -e[0].count("/")):
        try:
            os.rmdir(top)
        except OSError:
            pass


def leftovers(folder: str) -> list[str]:
    return [top for top, _, _ in os.walk(folder) if top != folder]


async def test_a_job_over_its_memory_is_oom_killed_in_its_cgroup_and_retried_with_twice_as_much(
    env, shared_workdir, delegated
):
    """memory 150M: the first trial's 200 MB are over its cgroup's limit (the
    kernel's OOM killer ends it, cause oom); the retry asks 300M and holds its
    200 MB, whose peak its cgroup records."""
    xq = make_xqute(
        env, shared_workdir, (1,),
        cgroup_dir=delegated,
        resources={"memory": "150M"},
        num_retries=1,
        error_strategy="retry",
    )
    await xq.feed(["python3", "-c", HOLD_200MB])
    await run(xq)
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    assert job.trial_count == 1
    first = json.loads(read(job.retry_dir / "0" / "job.usage"))
    assert first["cause"] == "oom", first
    assert first["rc"] == 137, first
    assert first["requested"]["memory"] in ("150M", 150), first
    # the first trial's peak: its limit, give or take a page
    assert first["peak_memory_mb"] is not None and first["peak_memory_mb"] <= 151, first
    usage = await job.get_usage()
    assert usage["cause"] == "ok" and usage["trial"] == 1, usage
    assert usage["requested"]["memory"] in ("300M", 300), usage
    assert usage["peak_memory_mb"] >= 200, usage
    assert usage["sources"]["peak_memory_mb"] == "cgroup", usage
    # the trials' cgroups and the manager's folder of them are gone
    assert leftovers(delegated) == []


async def test_a_job_that_asks_no_memory_gets_a_cgroup_for_its_peak(env, shared_workdir, delegated):
    xq = make_xqute(env, shared_workdir, (1,), cgroup_dir=delegated)
    await xq.feed(["python3", "-c", HOLD_200MB])
    await run(xq)
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    usage = await job.get_usage()
    assert usage["cause"] == "ok", usage
    assert 200 <= usage["peak_memory_mb"] < 400, usage
    assert usage["sources"]["peak_memory_mb"] == "cgroup", usage
    assert leftovers(delegated) == []


async def test_other_ends_in_a_cgroup_keep_their_rc_and_cause(env, shared_workdir, delegated):
    """The wrapper's exit note keeps the rc: a failure is ``failed`` (no OOM
    kill counted), a job over its time ``timeout``; their cgroups go too."""
    xq = make_xqute(
        env, shared_workdir, (1,), cgroup_dir=delegated, resources={"memory": "100M", "time": 2}
    )
    await xq.feed(["sh", "-c", "echo broken >&2; exit 3"])
    await xq.feed(["sleep", "30"])
    await run(xq)
    failing, slow = xq.jobs
    assert await failing.get_rc() == 3
    assert (await failing.get_usage())["cause"] == "failed"
    note = read(failing.metadir / "job.memory").split("\n")
    assert note[0].startswith("cgroup " + delegated) and "oom_kill 0" in note, note
    assert await slow.get_rc() == 124
    assert (await slow.get_usage())["cause"] == "timeout"
    assert leftovers(delegated) == []


@pytest.mark.parametrize("which", [1, 2], ids=["host1", "host2"])
async def test_without_a_cgroup_the_limit_is_best_effort_and_its_failure_is_oom(
    env, shared_workdir, which
):
    """No cgroup the remote user may make (host 1 as the test user sees it;
    host 2 has no cgroup file system): ``ulimit -S -d`` on the command, whose
    MemoryError makes the cause oom; the retry with twice the memory passes.
    No peak (null)."""
    xq = make_xqute(
        env, shared_workdir, (which,),
        resources={"memory": "150M"},
        num_retries=1,
        error_strategy="retry",
    )
    await xq.feed(["python3", "-c", HOLD_200MB])
    await run(xq)
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    first = json.loads(read(job.retry_dir / "0" / "job.usage"))
    assert first["cause"] == "oom", first
    assert "MemoryError" in read(job.retry_dir / "0" / "job.stderr")
    usage = await job.get_usage()
    assert usage["cause"] == "ok" and usage["requested"]["memory"] in ("300M", 300), usage
    assert usage["peak_memory_mb"] is None, usage


async def test_cgroup_dir_false_makes_no_cgroup(env, shared_workdir, delegated):
    xq = make_xqute(env, shared_workdir, (1,), cgroup_dir=False)
    await xq.feed(["python3", "-c", HOLD_200MB])
    await run(xq)
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    assert (await job.get_usage())["peak_memory_mb"] is None
    assert leftovers(delegated) == []


def test_a_relative_cgroup_dir_is_refused(tmp_path):
    from xqute.schedulers.ssh_scheduler import SshScheduler

    with pytest.raises(ValueError, match="cgroup_dir"):
        SshScheduler(tmp_path, servers=["h"], cgroup_dir="relative/dir")
    with pytest.raises(ValueError, match="cgroup_dir"):
        SshScheduler(tmp_path, servers={"h": {"cgroup_dir": 3}})



def test_the_launch_script_with_cgroups_is_posix_sh(tmp_path):
    """The cgroup code goes to the host's /bin/sh: dash (POSIX) must parse it."""
    import shutil
    import subprocess

    from xqute.schedulers.ssh_scheduler.launcher import launch_script

    dash = shutil.which("dash") or "/bin/sh"
    text = launch_script(
        [str(tmp_path / "a b.sh"), str(tmp_path / "c.sh")], "/bin/bash", str(tmp_path),
        cgroups=[("job0.1", 150 << 20), None], cgroup_parent="xqute-ssh-1-abcdef",
        cgroup_dir="/sys/fs/cgroup/it's here", remove=["/sys/fs/cgroup/x y/job3.2"],
    )
    proc = subprocess.run([dash, "-n"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
