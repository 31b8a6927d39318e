"""The ssh scheduler against two real sshd hosts started by scripts/ssh.sh:
host 1 on 127.0.0.1:2222, host 2 at 10.200.0.2 in its own network namespace
(its own host name), both sharing this machine's file system."""

from __future__ import annotations

import asyncio
import json
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

from conftest import ROOT, processes_with
from tests.realparts import part_env, require
from xqute import JobStatus, Xqute
from xqute.schedulers.ssh_scheduler import SshScheduler

SCRIPT = ROOT / "scripts" / "ssh.sh"
RUN_LIMIT = 180  # seconds; a run that takes longer is hung, and fails the test


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def env() -> dict[str, str]:
    require("ssh")
    return part_env("ssh")


@pytest.fixture
def shared_workdir(env):
    """A workdir (with a space in its path) on the hosts' shared file system,
    where the test user the jobs run as can write (default ACLs)."""
    top = Path(env["XQUTE_SSH_SHARED_DIR"]) / f"test-{uuid.uuid4().hex[:10]}"
    path = top / "work dir"
    os.makedirs(path)  # not mkdtemp: its mode 0700 would mask the ACLs
    yield path
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def host2_restored(env):
    """For tests that take host 2 down: bring it back afterwards, whatever happens."""
    yield
    proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def host2(action: str) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def servers(env, which=(1, 2)) -> dict:
    """The mapping form of ``servers``: address -> port, user, key."""
    return {
        env[f"XQUTE_SSH_HOST{i}"]: {
            "port": int(env[f"XQUTE_SSH_PORT{i}"]),
            "user": env["XQUTE_SSH_USER"],
            "keyfile": env["XQUTE_SSH_KEY"],
        }
        for i in which
    }


def known_hosts_args(env) -> list[str]:
    # the hosts' keys are in the project's known_hosts, not in root's
    return ["-o", f"UserKnownHostsFile={env['XQUTE_SSH_KNOWN_HOSTS']}"]


def make_xqute(env, workdir, which, **opts) -> Xqute:
    """An ssh run on the hosts ``which`` at forks 2; ``error_strategy`` and
    ``num_retries`` may be given, the other ``opts`` are scheduler options."""
    return Xqute(
        "ssh",
        workdir=workdir,
        forks=2,
        error_strategy=opts.pop("error_strategy", "ignore"),
        num_retries=opts.pop("num_retries", 0),
        scheduler_opts={
            "servers": servers(env, which),
            "ssh_args": known_hosts_args(env),
            **opts,
        },
    )


def hostname_of(env) -> dict[str, str]:
    """What `hostname` prints on each host, by the label used in servers."""
    names = {}
    for i in (1, 2):
        names[env[f"XQUTE_SSH_HOST{i}"]] = env[f"XQUTE_SSH_HOSTNAME{i}"]
        names[env[f"XQUTE_SSH_ALIAS{i}"]] = env[f"XQUTE_SSH_HOSTNAME{i}"]
    return names


def on_host(env, alias: str, command: str) -> str:
    """Run ``command`` on a host through the real client; its stdout."""
    proc = subprocess.run(
        [env["XQUTE_SSH_CLIENT"], alias, command], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def remote_processes(env, marker: str) -> dict[str, list[str]]:
    """Command lines with ``marker``, as each host's own ``ps`` shows them (host 2
    has its own pid namespace; host 1, this machine, sees host 2's too)."""
    found = {}
    for i in (1, 2):
        host = env[f"XQUTE_SSH_HOST{i}"]
        lines = on_host(env, env[f"XQUTE_SSH_ALIAS{i}"], "ps -eo args=").splitlines()
        found[host] = [line for line in lines if marker in line and "ps -eo" not in line]
    return found


async def run(xq: Xqute) -> float:
    start = time.monotonic()
    await asyncio.wait_for(xq.run_until_complete(), RUN_LIMIT)
    return time.monotonic() - start


def read(path) -> str:
    return Path(path).read_text()


# ------------------------------------------------------------- real hosts
async def test_jobs_run_on_both_hosts_with_their_output_and_host(env, shared_workdir):
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        forks=4,
        scheduler_opts={"servers": servers(env), "ssh_args": known_hosts_args(env)},
    )
    for i in range(6):
        await xq.feed(["sh", "-c", 'echo "job $XQUTE_JOB_INDEX says $1 on $(hostname)"', "sh", f"hi {i}"])
    await run(xq)

    names = hostname_of(env)
    used = set()
    for job in xq.jobs:
        assert await job.get_rc() == 0, read(job.stderr_file)
        assert await job.get_status(refresh=True) == JobStatus.FINISHED
        pid, _, host = read(job.jid_file).strip().partition("@")
        assert pid.isdigit() and host in servers(env)
        used.add(host)
        # the host recorded in the job id is the one the job really ran on
        assert read(job.stdout_file) == f"job {job.index} says hi {job.index} on {names[host]}\n"
    assert used == set(servers(env))


async def test_host_aliases_from_the_users_ssh_config_work(env, shared_workdir):
    # the real client is driven, so its config file (here given with -F) applies
    aliases = [env["XQUTE_SSH_ALIAS1"], env["XQUTE_SSH_ALIAS2"]]
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        forks=2,
        scheduler_opts={"servers": aliases, "ssh_args": ["-F", env["XQUTE_SSH_CONFIG"]]},
    )
    await xq.feed("hostname")
    await xq.feed("hostname")
    await run(xq)
    names = hostname_of(env)
    hosts = set()
    for job in xq.jobs:
        assert await job.get_rc() == 0, read(job.stderr_file)
        host = read(job.jid_file).strip().partition("@")[2]
        hosts.add(host)
        assert read(job.stdout_file).strip() == names[host]
    assert hosts == set(aliases)


async def test_eight_two_second_jobs_at_forks_8_run_at_once(env, shared_workdir):
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        forks=8,
        scheduler_opts={"servers": servers(env), "ssh_args": known_hosts_args(env)},
    )
    for _ in range(8):
        await xq.feed(["sleep", "2"])
    elapsed = await run(xq)
    for job in xq.jobs:
        assert await job.get_rc() == 0, read(job.stderr_file)
    # one after the other would take 16 s; all at once about 2 s plus overhead
    assert elapsed < 8, f"8 x sleep 2 at forks 8 took {elapsed:.1f} s"
    hosts = [read(job.jid_file).strip().partition("@")[2] for job in xq.jobs]
    assert sorted(hosts.count(h) for h in set(hosts)) == [4, 4]


async def test_failing_jobs_report_their_return_codes(env, shared_workdir):
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        forks=3,
        scheduler_opts={"servers": servers(env), "ssh_args": known_hosts_args(env)},
    )
    await xq.feed(["sh", "-c", "echo broken >&2; exit 3"])
    await xq.feed(["no-such-program-xq"])
    await xq.feed(["true"])
    await run(xq)
    failing, missing, ok = xq.jobs
    assert await failing.get_rc() == 3
    assert await failing.get_status(refresh=True) == JobStatus.FAILED
    assert "broken" in read(failing.stderr_file)
    assert await missing.get_rc() == 127
    assert "no-such-program-xq" in read(missing.stderr_file)
    assert await ok.get_rc() == 0


async def test_jobs_go_to_the_least_loaded_host(env, shared_workdir):
    # job 0 holds its host until the last job releases it; every other job must
    # go to the other host (round-robin by index would put half of them there)
    flag = shared_workdir.parent / "release"
    hold = f'while [ ! -e "$1" ]; do sleep 0.1; done'
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        forks=2,
        scheduler_opts={"servers": servers(env), "ssh_args": known_hosts_args(env)},
    )
    await xq.feed(["sh", "-c", hold, "sh", str(flag)])
    for _ in range(5):
        await xq.feed(["hostname"])
    await xq.feed(["sh", "-c", 'hostname; touch "$1"', "sh", str(flag)])
    await run(xq)
    holder_host = read(xq.jobs[0].jid_file).strip().partition("@")[2]
    for job in xq.jobs:
        assert await job.get_rc() == 0, read(job.stderr_file)
    others = {read(job.jid_file).strip().partition("@")[2] for job in xq.jobs[1:]}
    assert others == set(servers(env)) - {holder_host}


async def test_one_liveness_call_per_host_per_round(env, shared_workdir, tmp_path):
    # a real ssh behind a wrapper that logs each call's remote command
    log = shared_workdir.parent / "ssh-calls.log"
    wrapper = tmp_path / "logging-ssh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> {log}\n'
        'exec ssh "$@"\n'
    )
    wrapper.chmod(0o755)
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        forks=6,
        scheduler_opts={
            "ssh": str(wrapper),
            "servers": servers(env),
            "ssh_args": known_hosts_args(env),
        },
    )
    for _ in range(6):
        await xq.feed(["sleep", "3"])
    await run(xq)
    for job in xq.jobs:
        assert await job.get_rc() == 0, read(job.stderr_file)
    pids_by_host: dict[str, set[str]] = {}
    for job in xq.jobs:
        pid, _, host = read(job.jid_file).strip().partition("@")
        pids_by_host.setdefault(host, set()).add(pid)
    ps_calls = [line for line in log.read_text().splitlines() if " ps -o pid= -o args= -p " in line]
    assert ps_calls
    for host, pids in pids_by_host.items():
        calls = [c for c in ps_calls if f" {host} ps " in c]
        asked = [set(c.rsplit(" ", 1)[1].split(",")) for c in calls]
        # while all three of its jobs ran, each round asked about all of them at once
        assert pids in asked, (host, pids, asked)
        assert all(a <= pids for a in asked)
    # never one call per job per round: far fewer calls than job-rounds
    assert len(ps_calls) < 6 * 6


async def test_unknown_host_key_is_refused_by_default(env, shared_workdir, tmp_path):
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        scheduler_opts={
            "servers": servers(env, which=(1,)),
            # no user config, no known key: ssh's defaults decide
            "ssh_args": ["-F", "/dev/null", "-o", f"UserKnownHostsFile={empty_known_hosts}",
                         "-o", "GlobalKnownHostsFile=/dev/null"],
            "submit_retries": 1,
        },
    )
    await xq.feed(["touch", str(shared_workdir / "ran")])
    await run(xq)
    job = xq.jobs[0]
    assert await job.get_rc() == -2
    stderr = read(job.stderr_file)
    assert "Host key verification failed" in stderr
    assert env["XQUTE_SSH_HOST1"] in stderr and "known_hosts" in stderr
    assert not (shared_workdir / "ran").exists()
    assert empty_known_hosts.read_text() == ""  # nothing was accepted behind our back


async def test_connection_sockets_are_gone_after_the_run(env, shared_workdir):
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        forks=2,
        scheduler_opts={"servers": servers(env), "ssh_args": known_hosts_args(env)},
    )
    await xq.feed(["sleep", "1"])
    await xq.feed(["sleep", "1"])
    scheduler: SshScheduler = xq.scheduler  # type: ignore[assignment]
    seen: dict[str, object] = {}

    async def watch():
        while not seen.get("sockets"):
            folder = scheduler.socket_dir
            if folder and os.path.isdir(folder) and len(os.listdir(folder)) == 2:
                seen["dir"] = folder
                seen["mode"] = os.stat(folder).st_mode & 0o777
                seen["sockets"] = sorted(os.listdir(folder))
                seen["masters"] = [
                    p for p in processes_with(folder) if "ControlMaster=yes" in p or "[mux]" in p
                ]
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    await run(xq)
    await asyncio.wait_for(watcher, 5)
    folder = seen["dir"]
    assert seen["mode"] == 0o700  # private
    assert len(seen["masters"]) == 2  # one multiplexed connection per host
    assert not os.path.exists(folder)
    assert processes_with(folder) == []  # the masters ended too
    assert scheduler.socket_dir is None


async def test_sigterm_to_the_manager_kills_the_remote_jobs(env, shared_workdir, tmp_path):
    marker = f"{uuid.uuid4().int % 10**6}.{uuid.uuid4().int % 997 + 1}"
    quiet = f"{uuid.uuid4().int % 10**6}.{uuid.uuid4().int % 991 + 1}"
    driver = tmp_path / "manager.py"
    driver.write_text(textwrap.dedent(f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from xqute import Xqute
        async def main():
            opts = json.loads(sys.argv[2])
            xq = Xqute("ssh", workdir=sys.argv[1], forks=4, scheduler_opts=opts)
            # a job with a child in the background, and one that ignores SIGTERM
            await xq.feed(["sh", "-c", "sleep {marker} & sleep {marker}; wait"])
            await xq.feed(["sh", "-c", "sleep {marker} & sleep {marker}; wait"])
            await xq.feed(["sh", "-c", "trap '' TERM; sleep {quiet}"])
            await xq.feed(["sh", "-c", "trap '' TERM; sleep {quiet}"])
            await xq.run_until_complete()
            print("manager ended", flush=True)
        asyncio.run(main())
    """))
    opts = {"servers": servers(env), "ssh_args": known_hosts_args(env)}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(shared_workdir), json.dumps(opts)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
    )
    try:
        status_files = [shared_workdir / str(i) / "job.status" for i in range(4)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(f.exists() and f.read_text().strip() == str(JobStatus.RUNNING) for f in status_files):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the jobs did not start: " + (proc.stdout.read() if proc.poll() is not None else ""))
        jids = [(shared_workdir / str(i) / "job.jid").read_text().strip().partition("@") for i in range(4)]
        assert {host for _, _, host in jids} == set(servers(env))
        # each host shows the processes of the jobs it runs
        running = {h: [] for h in servers(env)}
        for tag in (marker, quiet):
            for host, lines in remote_processes(env, f"sleep {tag}").items():
                running[host] += lines
        assert all(running.values()), running

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "manager ended" in out, out
    # checked on the hosts themselves: nothing of the jobs is left, not even the
    # children and the commands that ignored SIGTERM
    for tag in (marker, quiet):
        assert remote_processes(env, f"sleep {tag}") == {h: [] for h in servers(env)}
    aliases = {env[f"XQUTE_SSH_HOST{i}"]: env[f"XQUTE_SSH_ALIAS{i}"] for i in (1, 2)}
    for pid, _, host in jids:
        assert on_host(env, aliases[host], f"ps -o pid= -p {pid} || true").strip() == ""
    for i in range(4):
        assert (shared_workdir / str(i) / "job.status").read_text().strip() == str(JobStatus.FAILED)
        assert (shared_workdir / str(i) / "job.rc").read_text().strip() != "0"


async def test_a_rerun_follows_jobs_a_killed_manager_left_running(env, shared_workdir, tmp_path):
    ctrl_dir = tmp_path / "ctl"
    runs_log = shared_workdir.parent / "runs.log"
    cmd = ["sh", "-c", 'echo started >> "$1"; sleep 3; echo done', "sh", str(runs_log)]
    opts = {
        "servers": {
            host: {**options, "ctrl_dir": str(ctrl_dir)} for host, options in servers(env).items()
        },
        "ssh_args": known_hosts_args(env),
    }
    driver = tmp_path / "manager.py"
    driver.write_text(textwrap.dedent(f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from xqute import Xqute
        async def main():
            xq = Xqute("ssh", workdir=sys.argv[1], scheduler_opts=json.loads(sys.argv[2]))
            await xq.feed(json.loads(sys.argv[3]))
            await xq.run_until_complete()
        asyncio.run(main())
    """))
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(shared_workdir), json.dumps(opts), json.dumps(cmd)],
        cwd=str(ROOT),
    )
    try:
        status = shared_workdir / "0" / "job.status"
        deadline = time.monotonic() + 60
        while not (status.exists() and status.read_text().strip() == str(JobStatus.RUNNING)):
            assert time.monotonic() < deadline, "the job did not start"
            await asyncio.sleep(0.05)
        proc.kill()  # no clean-up at all, as after a crash
        proc.wait()
        first_jid = read(shared_workdir / "0" / "job.jid").strip()

        xq = Xqute("ssh", workdir=shared_workdir, scheduler_opts=opts)
        await xq.feed(cmd)
        await run(xq)
        job = xq.jobs[0]
        assert await job.get_rc() == 0
        assert read(job.jid_file).strip() == first_jid  # followed, not started again
        assert read(runs_log) == "started\n"
        assert read(job.stdout_file) == "done\n"
    finally:
        if proc.poll() is None:
            proc.kill()
        # the killed manager's masters linger (ControlPersist): end them
        for line in processes_with(str(ctrl_dir)):
            os.kill(int(line.split(":", 1)[0]), signal.SIGTERM)


async def test_a_host_stopped_mid_run_loses_its_jobs_to_the_other(env, shared_workdir, host2_restored):
    # host 2 "crashes" while two jobs run there: those fail with a message naming
    # the host and ssh's error, are retried, and land on host 1
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        forks=4,
        error_strategy="retry",
        num_retries=1,
        scheduler_opts={
            "servers": servers(env),
            "ssh_args": known_hosts_args(env),
            "connect_timeout": 3,
            "lost_after": 1,
            "retry_host_after": 600,
        },
    )
    for _ in range(4):
        await xq.feed(["sh", "-c", "sleep 4; hostname"])
    runner = asyncio.ensure_future(run(xq))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(job._started for job in xq.jobs):
            break
        await asyncio.sleep(0.1)
    host2_label = env["XQUTE_SSH_HOST2"]
    on_host2 = [job for job in xq.jobs if (job._jid or "").endswith("@" + host2_label)]
    assert len(on_host2) == 2
    host2("host2-down")
    await asyncio.wait_for(runner, RUN_LIMIT)

    host1_name = env["XQUTE_SSH_HOSTNAME1"]
    for job in xq.jobs:
        assert await job.get_rc() == 0, read(job.stderr_file)
        assert read(job.stdout_file).strip() == host1_name
    for job in on_host2:
        assert job.trial_count == 1
        first_try = read(job.retry_dir / "0" / "job.stderr")
        assert host2_label in first_try and "Connection refused" in first_try, first_try
        assert read(job.jid_file).strip().endswith("@" + env["XQUTE_SSH_HOST1"])


async def test_a_host_that_does_not_answer_is_skipped_without_hanging(env, shared_workdir, host2_restored):
    host2("host2-unreachable")  # packets to it go nowhere: connections time out
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        forks=4,
        scheduler_opts={
            "servers": servers(env),
            "ssh_args": known_hosts_args(env),
            "connect_timeout": 2,
        },
    )
    for _ in range(4):
        await xq.feed(["hostname"])
    await run(xq)  # bounded by RUN_LIMIT: no hang on the silent host
    for job in xq.jobs:
        assert await job.get_rc() == 0, read(job.stderr_file)
        assert read(job.jid_file).strip().endswith("@" + env["XQUTE_SSH_HOST1"])
    host = xq.scheduler.servers[env["XQUTE_SSH_HOST2"]]  # type: ignore[attr-defined]
    # tried once per wait: every job of the first batch got the same answer
    assert "Connection timed out" in host.last_error, host.last_error


async def test_all_hosts_down_fails_the_jobs_with_the_hosts_error(env, shared_workdir, host2_restored):
    host2("host2-down")
    xq = Xqute(
        "ssh",
        workdir=shared_workdir,
        scheduler_opts={
            "servers": servers(env, which=(2,)),
            "ssh_args": known_hosts_args(env),
            "connect_timeout": 2,
            "submit_retries": 2,
        },
    )
    await xq.feed(["true"])
    await run(xq)
    job = xq.jobs[0]
    assert await job.get_rc() == -2
    stderr = read(job.stderr_file)
    assert env["XQUTE_SSH_HOST2"] in stderr and "Connection refused" in stderr, stderr


# ------------------------------------------------------------- bad input
def test_missing_ssh_binary_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ssh not found: .no-such-ssh-xq."):
        SshScheduler(tmp_path, ssh="no-such-ssh-xq", servers=["h"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "needs servers"),
        ([], "needs servers"),
        ("host", "list of host names or a mapping"),
        (["a", "a"], "listed twice"),
        ({"h": {"prot": 22}}, "Unknown option.*'prot'.*allowed: port"),
        ({"h": {"port": "ssh"}}, "Invalid port"),
        ({"h": {"port": 70000}}, "Invalid port"),
        ({"h": "22"}, "must be a mapping"),
        (["-oProxyCommand=x"], "Invalid ssh server"),
        ({"h": {"ctrl_dir": "/" + "d" * 120}}, "too long for a Unix socket"),
    ],
)
def test_bad_servers_are_refused_with_a_clear_error(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        SshScheduler(tmp_path, servers=bad)


@pytest.mark.parametrize(
    "option, value",
    [("connect_timeout", 0), ("lost_after", -1), ("retry_host_after", "soon"), ("ssh_args", "-v")],
)
def test_bad_options_are_refused(tmp_path, option, value):
    with pytest.raises(ValueError, match=option):
        SshScheduler(tmp_path, servers=["h"], **{option: value})


def test_poll_options_are_the_users_to_set(tmp_path):
    slow = SshScheduler(tmp_path, servers=["h"], poll_interval=3)
    assert (slow.poll_interval, slow.poll_interval_max) == (3.0, 3.0)
    default = SshScheduler(tmp_path, servers=["h"])
    assert (default.poll_interval, default.poll_interval_max) == (0.2, 0.5)


async def test_the_launcher_is_plain_posix_shell(tmp_path):
    # the launch script runs under dash (Debian's /bin/sh, no bash-isms), starts
    # every wrapper detached in a session of its own and reports each pid
    from xqute.schedulers.ssh_scheduler.launcher import launch_script, parse_launch_output

    dash = shutil.which("dash")
    if dash is None:
        pytest.skip("no dash here to check POSIX-ness")
    scripts, outs = [], []
    for k in range(3):
        script = tmp_path / f"job script {k}.sh"
        out = tmp_path / f"out {k}"
        script.write_text(f'echo "$$ $(ps -o sid= -p $$)" > "{out}"\n')
        scripts.append(str(script))
        outs.append(out)
    proc = subprocess.run(
        [dash, "-s"], input=launch_script(scripts, "/bin/bash", str(tmp_path)),
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    pids, errors = parse_launch_output(proc.stdout)
    assert errors == {} and sorted(pids) == [0, 1, 2]
    for k, out in enumerate(outs):
        deadline = time.monotonic() + 10
        while not (out.exists() and out.read_text().strip()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        job_pid, sid = out.read_text().split()
        assert int(job_pid) == pids[k] == int(sid)  # the wrapper leads its own session


async def test_the_launcher_says_when_a_script_is_not_on_a_shared_disk(tmp_path):
    from xqute.schedulers.ssh_scheduler.launcher import launch_script, parse_launch_output

    there = tmp_path / "there.sh"
    there.write_text("exit 0\n")
    proc = subprocess.run(
        ["/bin/sh", "-s"],
        input=launch_script([str(tmp_path / "missing"), str(there)], "/bin/bash", None),
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    pids, errors = parse_launch_output(proc.stdout)
    assert list(pids) == [1]  # the other job was still started
    assert "shares" in errors[0] and "missing" in errors[0]


async def test_a_job_whose_script_the_host_cannot_read_fails_with_the_reason(env, tmp_path):
    # tmp_path is root's (mode 0700): the hosts' user cannot read the script there
    xq = Xqute(
        "ssh",
        workdir=tmp_path / "work",
        scheduler_opts={"servers": servers(env, which=(2,)), "ssh_args": known_hosts_args(env)},
    )
    await xq.feed(["true"])
    await run(xq)
    job = xq.jobs[0]
    assert await job.get_rc() == -2
    stderr = read(job.stderr_file)
    assert "cannot read the job script" in stderr and env["XQUTE_SSH_HOSTNAME2"] in stderr
