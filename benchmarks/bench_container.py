"""N trivial jobs at F forks through a real container runtime (podman from
``scripts/podman.sh``), in one run:

- ``xqute (podman)``       this package, ``bin="podman"``;
- ``xqute (docker CLI)``   this package, ``bin="docker"`` against ``podman system service``;
- ``xqute 2.2.1 (podman)`` the release users run today, from its own venv
  (made by ``benchmarks/xqute2-venv.sh``), on the same runtime and image;
- ``floor``                the very ``podman run`` command lines this package would
  run, F at a time with bare asyncio: what any manager must at least pay.

Each contender runs in a fresh process. The runtime binary is reached through a
small shim that logs each call, so the table also says how many runtime calls
each contender made (``run`` and any others). Columns: wall time, jobs/s, the
manager's own CPU per job, the CPU of its children (runtime clients) per job,
its peak memory, failed jobs, calls.

    bash scripts/podman.sh start
    python benchmarks/bench_container.py --jobs 20 --forks 4 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The code each contender runs in its own interpreter; it prints one JSON line.
MEASURE = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys, time
    mode, njobs, forks, workdir, image, runtime = sys.argv[1:7]
    njobs, forks = int(njobs), int(forks)

    async def with_xqute():
        from xqute import Xqute
        xq = Xqute("container", workdir=os.path.join(workdir, "wd"), forks=forks,
                   scheduler_opts=dict(image=image, bin=runtime))
        for _ in range(njobs):
            await xq.feed(["true"])
        await xq.run_until_complete()
        return sum([1 for job in xq.jobs if await job.get_rc() != 0])

    async def floor():
        commands = json.load(open(os.path.join(workdir, "commands.json")))
        sem = asyncio.Semaphore(forks)
        async def one(argv):
            async with sem:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                await proc.wait()
        await asyncio.gather(*(one(argv) for argv in commands))
        rcs = [open(os.path.join(workdir, "wd", str(i), "job.rc")).read().strip()
               for i in range(len(commands))]
        return sum(1 for rc in rcs if rc != "0")

    start_cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if mode == "floor":
        bad = asyncio.run(floor())
    else:
        import logging
        import xqute
        logging.getLogger("XQUTE").setLevel(logging.WARNING)
        logging.getLogger("XQUTE").disabled = True  # 2.x logs through rich at INFO
        bad = asyncio.get_event_loop_policy().new_event_loop().run_until_complete(with_xqute())
    wall = time.perf_counter() - start
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "wall": wall,
        "cpu": (me.ru_utime - start_cpu.ru_utime) + (me.ru_stime - start_cpu.ru_stime),
        "child_cpu": kids.ru_utime + kids.ru_stime,
        "maxrss_kb": me.ru_maxrss,
        "failed": bad,
        "version": sys.modules["xqute"].__version__ if "xqute" in sys.modules else "",
    }))
    """
)

SHIM = """#!/bin/bash
printf '%s\\n' "$1" >> {log}
exec {real} "$@"
"""


def make_shim(folder: Path, runtime: str) -> tuple[Path, Path]:
    """A ``runtime`` in ``folder`` that logs its sub-command, then runs the real one."""
    real = shutil.which(runtime)
    if not real:
        raise SystemExit(f"{runtime} is not installed: run `bash scripts/podman.sh start`")
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{runtime}.calls"
    log.touch()
    shim = folder / runtime
    shim.write_text(SHIM.format(log=log, real=real))
    shim.chmod(0o755)
    return shim, log


def prepare_floor(workdir: Path, njobs: int, image: str, runtime: str) -> None:
    """Write this package's wrappers and their exact ``podman run`` lines, untimed."""
    sys.path.insert(0, str(ROOT))
    import asyncio

    from xqute.schedulers.container_scheduler import ContainerScheduler

    async def write() -> list[list[str]]:
        sched = ContainerScheduler(str(workdir / "wd"), image=image, bin=runtime)
        commands = []
        for i in range(njobs):
            job = await sched.create_job(i, ["true"])
            await sched.wrapped_job_script(job)
            commands.append(sched.container_command(job, sched.container_name(job)))
        return commands

    commands = asyncio.run(write())
    (workdir / "commands.json").write_text(json.dumps(commands))


def run_one(python: str, mode: str, njobs: int, forks: int, image: str, runtime: str,
            timeout: float, ours: bool) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="xqbench-container-"))
    try:
        shim, log = make_shim(workdir / "shims", runtime)
        if mode == "floor":
            prepare_floor(workdir, njobs, image, str(shim))
            log.write_text("")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["XQUTE_LOG_LEVEL"] = "WARNING"
        if ours:
            env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.run(
            [python, "-c", MEASURE, mode, str(njobs), str(forks), str(workdir), image, str(shim)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=str(workdir),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["calls"] = Counter(log.read_text().split())
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def podman_env() -> dict[str, str]:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "podman.sh"), "status"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"podman is not up ({proc.stdout.strip()}): run `bash scripts/podman.sh start`")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "podman.sh"), "env"],
                         capture_output=True, text=True, check=True).stdout
    env = {}
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name.strip()] = value.strip()
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--forks", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender; the median is shown")
    parser.add_argument("--no-xqute2", action="store_true", help="skip xqute 2.2.1")
    parser.add_argument("--no-docker", action="store_true", help="skip the docker CLI contender")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    env = podman_env()
    os.environ.update(env)  # DOCKER_HOST for the docker CLI
    image = env["XQUTE_TEST_IMAGE"]

    contenders = [("xqute (podman)", sys.executable, "podman", True)]
    if not args.no_docker and shutil.which("docker"):
        contenders.append(("xqute (docker CLI)", sys.executable, "docker", True))
    contenders.append(("floor", sys.executable, "podman", True))
    if not args.no_xqute2:
        py2 = subprocess.run(
            ["bash", str(HERE / "xqute2-venv.sh")], capture_output=True, text=True, check=True
        ).stdout.strip()
        contenders.append(("xqute 2.2.1 (podman)", py2, "podman", False))

    rows = []
    # interleave the contenders, so drift in machine load touches them alike
    runs: dict[str, list[dict]] = {name: [] for name, *_ in contenders}
    for _ in range(args.repeat):
        for name, python, runtime, ours in contenders:
            mode = "floor" if name == "floor" else "xqute"
            result = run_one(python, mode, args.jobs, args.forks, image, runtime, args.timeout, ours)
            if mode == "xqute":
                expected = "3" if ours else "2.2.1"
                assert result["version"].startswith(expected), (name, result["version"])
            runs[name].append(result)
            print(f"  {name}: {result['wall']:.2f} s", file=sys.stderr, flush=True)
    for name, *_ in contenders:
        done = runs[name]
        wall = statistics.median(r["wall"] for r in done)
        calls = done[-1]["calls"]
        rows.append((
            name, wall, args.jobs / wall,
            1000 * statistics.median(r["cpu"] for r in done) / args.jobs,
            1000 * statistics.median(r["child_cpu"] for r in done) / args.jobs,
            max(r["maxrss_kb"] for r in done) / 1024,
            max(r["failed"] for r in done),
            ", ".join(f"{n} {sub}" for sub, n in sorted(calls.items())) or "-",
        ))

    floor_wall = next(r[1] for r in rows if r[0] == "floor")
    print(f"\n{args.jobs} trivial jobs (`true`) in containers, forks={args.forks}, "
          f"median of {args.repeat} run(s), {os.cpu_count()} CPUs, image {image}\n")
    header = ("contender", "wall s", "jobs/s", "manager CPU ms/job", "clients' CPU ms/job",
              "peak MB", "failed", "runtime calls", "wall / floor")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, wall, rate, cpu, child, mem, failed, calls in rows:
        print(f"| {name} | {wall:.2f} | {rate:.2f} | {cpu:.1f} | {child:.1f} | {mem:.0f} | "
              f"{failed} | {calls} | {wall / floor_wall:.2f}x |")


if __name__ == "__main__":
    main()
