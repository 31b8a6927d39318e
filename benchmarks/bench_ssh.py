"""N jobs of `sleep S` at F forks over the two real SSH hosts of scripts/ssh.sh,
through this package and through xqute 2.2.1, in one run, on the same hosts.

Both drive the same real ssh client with the same client config (the hosts'
aliases, key and known_hosts from ``scripts/ssh.sh env``), through a wrapper that
counts the ssh calls each makes. Each contender runs in a fresh process; the
table gives wall time, the manager's CPU per job, the number of ssh calls, how
the jobs were spread over the hosts, and the ssh master connections still
running after the run returned (they are then ended by this script).

    bash scripts/ssh.sh start
    python benchmarks/bench_ssh.py --jobs 40 --forks 8 --sleep 1 [--repeat 3]

xqute 2.2.1 comes from ``benchmarks/xqute2-venv.sh``. Its launcher runs
``sys.executable`` on the remote host, which must be a python the hosts' user
can run: when the venv's python is not (it links into root's home here), the
same venv's packages are run with the system python of the same version.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# What each contender runs, in its own interpreter; it prints one JSON line.
MEASURE = textwrap.dedent(
    """
    import asyncio, json, logging, resource, sys, time
    # imported before the loop exists: importing xqute sets the loop policy
    # (uvloop), as it did in 2.x
    import xqute
    from xqute import Xqute
    njobs, forks, sleep, workdir, ssh, servers = sys.argv[1:]
    njobs, forks = int(njobs), int(forks)

    async def main():
        logging.getLogger("XQUTE").setLevel(logging.WARNING)
        xq = Xqute("ssh", workdir=workdir, forks=forks,
                   scheduler_opts={"ssh": ssh, "servers": json.loads(servers)})
        for _ in range(njobs):
            await xq.feed(["sleep", sleep])
        await xq.run_until_complete()
        failed, hosts = 0, {}
        for job in xq.jobs:
            if await job.get_rc() != 0:
                failed += 1
            host = str(await job.get_jid()).partition("@")[2]
            hosts[host] = hosts.get(host, 0) + 1
        return failed, hosts, xqute.__version__

    start_cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    failed, hosts, version = asyncio.run(main())
    wall = time.perf_counter() - start
    me = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "wall": wall,
        "cpu": (me.ru_utime - start_cpu.ru_utime) + (me.ru_stime - start_cpu.ru_stime),
        "failed": failed,
        "hosts": hosts,
        "version": version,
    }))
    """
)


def ssh_env() -> dict[str, str]:
    script = ROOT / "scripts" / "ssh.sh"
    status = subprocess.run(["bash", str(script), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        sys.exit(f"the ssh hosts are not up ({status.stdout.strip()}): bash {script} start")
    out = subprocess.run(["bash", str(script), "env"], capture_output=True, text=True, check=True).stdout
    env = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


def xqute2_python(env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A python for xqute 2.2.1 that the hosts' user can run, and its extra env."""
    venv_python = subprocess.run(
        ["bash", str(HERE / "xqute2-venv.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    probe = subprocess.run(
        [env["XQUTE_SSH_CLIENT"], env["XQUTE_SSH_ALIAS1"], f"test -x {venv_python}"],
        capture_output=True,
    )
    if probe.returncode == 0:
        return venv_python, {}
    info = subprocess.run(
        [venv_python, "-I", "-c", "import os, sys, xqute; print(os.path.dirname(os.path.dirname("
         "xqute.__file__))); print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    site, version = info[0], info[1]
    system_python = shutil.which(f"python{version}", path="/usr/bin:/usr/local/bin")
    if system_python is None:
        sys.exit(f"no system python{version} the hosts' user can run for xqute 2.2.1")
    return system_python, {"PYTHONPATH": site}


def counting_ssh(folder: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """An ssh wrapper (the project's client config) that logs one line per call."""
    log = folder / "ssh-calls.log"
    wrapper = folder / "ssh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"echo x >> '{log}'\n"
        f"exec ssh -F '{env['XQUTE_SSH_CONFIG']}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper, log


def processes_with(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if text.encode() in fh.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def jobs_that_ran(workdir: Path, since: float) -> tuple[int, float]:
    """(jobs whose wrapper recorded rc 0, seconds from ``since`` to the last rc
    file written), read from the workdir itself."""
    count, last = 0, since
    for rc_file in workdir.glob("*/job.rc"):
        try:
            if rc_file.read_text().strip() == "0":
                count += 1
                last = max(last, rc_file.stat().st_mtime)
        except OSError:
            continue
    return count, last - since


def run_one(name: str, python: str, extra_env: dict[str, str], args, env: dict[str, str]) -> dict:
    top = Path(tempfile.mkdtemp(prefix="bench-", dir=env["XQUTE_SSH_SHARED_DIR"]))
    os.chmod(top, 0o755)
    ctrl_dir = Path(tempfile.mkdtemp(prefix="xqb-"))  # short: it holds sockets
    try:
        workdir = top / "work"
        os.makedirs(workdir)  # default ACLs of the shared dir: the hosts' user writes here
        wrapper, log = counting_ssh(top, env)
        servers = {env["XQUTE_SSH_ALIAS1"]: {"ctrl_dir": str(ctrl_dir)},
                   env["XQUTE_SSH_ALIAS2"]: {"ctrl_dir": str(ctrl_dir)}}
        proc_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc_env.update(extra_env)
        proc_env["XQUTE_LOG_LEVEL"] = "WARNING"
        started = time.time()
        proc = subprocess.Popen(
            [python, "-c", MEASURE, str(args.jobs), str(args.forks), str(args.sleep),
             str(workdir), str(wrapper), json.dumps(servers)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=proc_env,
            cwd=str(top), start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=args.timeout)
            completed = True
        except subprocess.TimeoutExpired:
            # a run that never ends: interrupt it as a user would (Ctrl-C), then
            # count from its workdir what it got done
            completed = False
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
        ran, last_end = jobs_that_ran(workdir, started)
        if completed:
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{err[-3000:]}")
            result = json.loads(out.strip().splitlines()[-1])
        else:
            hosts: dict[str, int] = {}
            for jid_file in workdir.glob("*/job.jid"):
                host = jid_file.read_text().strip().partition("@")[2]
                hosts[host] = hosts.get(host, 0) + 1
            result = {"wall": args.timeout, "cpu": float("nan"), "failed": args.jobs - ran,
                      "hosts": hosts, "version": "2.2.1" if "2.2.1" in name else "3"}
        result["completed"] = completed
        result["ran"] = ran
        result["last_end"] = last_end
        result["ssh_calls"] = len(log.read_text().splitlines()) if log.exists() else 0
        # masters still running once the run returned: ours should leave none
        leftovers = processes_with(str(ctrl_dir))
        result["masters_left"] = len(leftovers)
        for pid in leftovers:  # started by this benchmark's contender: end them
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return result
    finally:
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(ctrl_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--forks", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each job sleeps")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; the median is shown")
    parser.add_argument("--no-xqute2", action="store_true", help="skip xqute 2.2.1")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds a run may take before it is interrupted (default 10 x ideal + 30)")
    args = parser.parse_args()
    args.sleep = f"{args.sleep:g}"

    env = ssh_env()
    contenders = [("xqute", sys.executable, {"PYTHONPATH": str(ROOT)}, "3")]
    if not args.no_xqute2:
        python2, extra2 = xqute2_python(env)
        contenders.append(("xqute 2.2.1", python2, extra2, "2.2.1"))

    ideal = math.ceil(args.jobs / args.forks) * float(args.sleep)
    if args.timeout is None:
        args.timeout = 10 * ideal + 30
    rows = []
    for name, python, extra_env, version in contenders:
        runs = []
        for _ in range(args.repeat):
            result = run_one(name, python, extra_env, args, env)
            assert result["version"].startswith(version), (name, result["version"])
            runs.append(result)
            state = "done" if result["completed"] else f"DID NOT FINISH within {args.timeout:.0f} s"
            print(f"  {name}: {state}, {result['wall']:.2f} s, {result['ran']} jobs ran "
                  f"(last ended at {result['last_end']:.1f} s), {result['ssh_calls']} ssh calls, "
                  f"hosts {result['hosts']}, {result['masters_left']} masters left",
                  file=sys.stderr, flush=True)
            time.sleep(1)  # let the hosts' sshd settle between runs
        done = [r for r in runs if r["completed"]]
        rows.append((
            name,
            f"{statistics.median(r['wall'] for r in done):.2f}" if done else
            f"did not finish in {args.timeout:.0f}",
            f"{statistics.median(r['wall'] for r in done) / ideal:.2f}x" if done else "-",
            f"{1000 * statistics.median(r['cpu'] for r in done) / args.jobs:.1f}" if done else "-",
            f"{min(r['ran'] for r in runs)} of {args.jobs}",
            f"{statistics.median(r['ssh_calls'] for r in runs):.0f}",
            " / ".join(str(n) for n in sorted(runs[-1]["hosts"].values(), reverse=True)) or "-",
            f"{max(r['masters_left'] for r in runs)}",
        ))

    print(f"\n{args.jobs} jobs of `sleep {args.sleep}`, forks={args.forks}, two ssh hosts, "
          f"{args.repeat} run(s) each (median), {os.cpu_count()} CPUs; "
          f"ideal (ceil(N/F) x S) = {ideal:.1f} s\n")
    header = ("contender", "wall s", "wall / ideal", "manager CPU ms/job", "jobs that ran",
              "ssh calls", "jobs per host", "ssh masters left running")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
