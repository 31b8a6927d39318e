"""Usage records and causes on the ssh scheduler, against the two real sshd
hosts of scripts/ssh.sh (host 2 in its own network and UTS namespace, so its
host name is its own): the wrapper's wall time, CPU and host; peak memory left
null (the test user may make no cgroup over there by itself; see
test_ssh_memory.py for the cgroup it is given); ``resources.time`` enforced by the
wrapper's ``timeout``, cause ``timeout``, and the retry asking 1.5 times the time.
"""

from __future__ import annotations

import json

import pytest

from tests.test_ssh import (  # noqa: F401 - fixtures
    env,
    hostname_of,
    known_hosts_args,
    make_xqute,
    read,
    run,
    servers,
    shared_workdir,
)
from xqute import Xqute
from xqute.schedulers.ssh_scheduler import SshScheduler

# CPU burnt until the job's own shell has used 1.2 s of it (user + sys, in
# clock ticks, /proc/<pid>/stat fields 14 and 15): as long as the host needs,
# never a wall-clock wait. ``\$``: the wrapper expands only $NAME in a
# command's arguments, and these are the job's bash's own.
BURN = (
    r"tck=\$(getconf CLK_TCK 2>/dev/null || echo 100); "
    r"while :; do read -r -a st </proc/\$BASHPID/stat; "
    r"(( (st[13] + st[14]) * 10 >= tck * 12 )) && break; done"
)


@pytest.mark.parametrize("which", [1, 2], ids=["host1", "host2"])
async def test_wall_cpu_and_the_remote_host_are_recorded(env, shared_workdir, which):
    xq = make_xqute(env, shared_workdir, (which,), resources={"time": 600})
    await xq.feed(["bash", "-c", BURN])
    await run(xq)
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    usage = await job.get_usage()
    assert usage == job.usage and usage is not None
    assert usage["cause"] == "ok" and usage["rc"] == 0
    assert usage["cpu_s"] >= 0.9, usage
    # one thread: at least as much wall time as CPU, give or take a tick
    assert usage["wall_s"] >= usage["cpu_s"] - 0.05, usage
    # the remote's own host name (host 2's is not this machine's)
    assert usage["host"] == env[f"XQUTE_SSH_HOSTNAME{which}"], usage
    assert usage["sources"] == {"wall_s": "wrapper", "cpu_s": "wrapper", "host": "wrapper"}
    # no cgroup the test user may make on the remote side: not measured, null
    assert usage["peak_memory_mb"] is None
    assert usage["requested"] == {"time": 600}


async def test_a_job_over_its_time_ends_timeout_and_its_retry_gets_half_as_much_again(
    env, shared_workdir
):
    """time 2 s: the first trial sleeps past it (the wrapper's timeout ends it,
    rc 124, cause timeout); the retry asks 3 s and, finding the first trial's
    mark, ends at once."""
    mark = shared_workdir / "first-trial-ran"
    script = '[ -e "$1" ] && exit 0; : >"$1"; sleep 120'
    xq = make_xqute(
        env, shared_workdir, (1, 2), resources={"time": 2},
        error_strategy="retry", num_retries=1,
    )
    await xq.feed(["bash", "-c", script, "bash", str(mark)])
    await run(xq)
    job = xq.jobs[0]
    assert await job.get_rc() == 0, read(job.stderr_file)
    assert job.trial_count == 1
    first = json.loads(read(job.retry_dir / "0" / "job.usage"))
    assert first["rc"] == 124 and first["cause"] == "timeout", first
    assert first["requested"] == {"time": 2}
    assert first["wall_s"] >= 2, first  # timeout let it run its 2 s first
    second = await job.get_usage()
    assert second["cause"] == "ok" and second["requested"] == {"time": 3}, second
    assert "timeout 3 " in read(job.metadir / "job.wrapped.ssh")
    assert second["host"] in {env["XQUTE_SSH_HOSTNAME1"], env["XQUTE_SSH_HOSTNAME2"]}


async def test_the_ssh_wrapper_measures_no_peak_memory(tmp_path):
    """No per-job cgroup over ssh: the wrapper's _xq_peak is a no-op, so the
    record's peak memory stays null rather than a guess."""
    sched = SshScheduler(str(tmp_path / "wd"), servers=["h1"])
    job = await sched.create_job(0, "true")
    assert sched.peak_memory_file(job) is None
    assert "_xq_peak() { :; }" in sched.wrap_job_script(job)


# ------------------------------------------------------------ node failures
FAKE_SSH = """#!/bin/sh
# The real ssh, except that once {down} exists, {host} looks down: every call
# for it but the control ones (-O check/exit) is refused as a dead host's are.
echo "$*" >>{log}
if [ -e {down} ]; then
    case " $* " in
        *" -O "*) ;;
        *" {host} "*) echo "ssh: connect to host {host} port 22: Connection refused" >&2; exit 255 ;;
    esac
fi
exec {real} "$@"
"""


async def test_a_job_lost_with_its_host_is_node_fail_and_its_retry_keeps_away(
    env, shared_workdir, tmp_path
):
    """The job runs on host 2; host 2 then looks down to the manager (a client
    that refuses it: the real host stays up for other tests) and the job's
    processes there are SIGKILLed, so nothing records an end: after lost_after
    the trial is node_fail with host 2's label as its host, and the retry asks
    to exclude host 2 and runs on host 1."""
    import asyncio
    import shlex
    import shutil

    from tests.test_ssh import on_host

    host1, host2 = env["XQUTE_SSH_HOST1"], env["XQUTE_SSH_HOST2"]
    down, log, fake = tmp_path / "host2-down", tmp_path / "ssh.log", tmp_path / "ssh"
    fake.write_text(FAKE_SSH.format(
        down=shlex.quote(str(down)), log=shlex.quote(str(log)), host=host2,
        real=shlex.quote(shutil.which("ssh")),
    ))
    fake.chmod(0o755)
    mark = shared_workdir / "first-trial-ran"
    xq = Xqute(
        "ssh", workdir=shared_workdir, forks=1, error_strategy="retry", num_retries=1,
        scheduler_opts={
            "servers": servers(env, (2, 1)),  # host 2 first: the first job goes there
            "ssh_args": known_hosts_args(env),
            "ssh": str(fake),
            "lost_after": 1,
            "liveness_interval": 0.5,
            "retry_host_after": 0.5,
            "connect_timeout": 3,
        },
    )
    job = await xq.feed(
        ["bash", "-c", '[ -e "$1" ] && { hostname; exit 0; }; : >"$1"; exec sleep 600', "bash", str(mark)]
    )
    runner = asyncio.ensure_future(run(xq))
    try:
        for _ in range(600):
            if mark.exists() and job._jid:
                break
            await asyncio.sleep(0.1)
        pid, _, label = job._jid.partition("@")
        assert label == host2 and pid.isdigit(), job._jid
        down.touch()
        # the wrapper first (so it records nothing), then the rest of its session
        on_host(env, env["XQUTE_SSH_ALIAS2"], f"kill -KILL {pid}; pkill -KILL -s {pid}; true")
        await runner
    finally:
        if not runner.done():
            runner.cancel()
    assert await job.get_rc() == 0, read(job.stderr_file)
    assert job.trial_count == 1
    first = json.loads(read(job.retry_dir / "0" / "job.usage"))
    assert first["cause"] == "node_fail" and first["rc"] == -3, first
    assert first["host"] == host2 and first["sources"]["host"] == "ssh", first
    assert "taken as lost" in read(job.retry_dir / "0" / "job.stderr")
    second = await job.get_usage()
    assert second["cause"] == "ok", second
    assert second["requested"] == {"exclude_nodes": [host2]}, second
    assert second["host"] == env["XQUTE_SSH_HOSTNAME1"]
    assert read(job.jid_file).strip().endswith("@" + host1)
    assert read(job.stdout_file).strip() == env["XQUTE_SSH_HOSTNAME1"]


def test_placement_leaves_out_excluded_hosts_unless_none_is_left(tmp_path):
    sched = SshScheduler(str(tmp_path / "wd"), servers=["h1", "h2", "h3"])
    for _ in range(3):  # whatever the turn
        assert "h2" not in [host.label for host in sched._placement_order(("h2",))]
    assert {host.label for host in sched._placement_order(("h1", "h2", "h3"))} == {"h1", "h2", "h3"}
