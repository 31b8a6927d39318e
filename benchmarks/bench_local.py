"""N trivial jobs at F forks through the local scheduler, in one run:

- ``xqute``  this package;
- ``xqute, usage off`` this package with ``usage: False`` (no usage record):
  what recording usage costs;
- ``xqute 2.2.1`` the release users run today, from its own venv
  (made by ``benchmarks/xqute2-venv.sh``);
- ``floor``  bare asyncio process spawning of the same wrapper scripts this
  package writes, F at a time: what any manager must at least pay;
- ``bare floor`` bare asyncio spawning of the plain command (``bash -c true``),
  F at a time: what running the command costs with no wrapper at all.

Contenders take turns within each repeat, so drifting machine load hits all
of them alike.

Each runs in a fresh process; the table gives wall time, jobs/s, the manager's
CPU per job (user+sys of the manager process itself), the CPU of the jobs
(wrappers and commands) per job, and the manager's peak memory.

    python benchmarks/bench_local.py --jobs 1000 --forks 16 [--repeat 3]
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
from pathlib import Path

from fsprobe import describe, file_costs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The code each contender runs, in its own interpreter. It prints one JSON line.
MEASURE = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys, time
    mode, njobs, forks, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    async def with_xqute(usage=True):
        from xqute import Xqute
        xq = Xqute(workdir=workdir, forks=forks, scheduler_opts={} if usage else {"usage": False})
        for i in range(njobs):
            await xq.feed(["true"])
        await xq.run_until_complete()
        bad = 0
        for job in xq.jobs:
            if await job.get_rc() != 0:
                bad += 1
        return bad

    async def floor():
        # the same wrapper scripts, spawned bare, F at a time
        scripts = [line.strip() for line in open(os.path.join(workdir, "scripts.txt"))]
        sem = asyncio.Semaphore(forks)
        async def one(path):
            async with sem:
                proc = await asyncio.create_subprocess_exec(
                    "/bin/bash", path, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                return await proc.wait()
        rcs = await asyncio.gather(*(one(p) for p in scripts))
        return sum(1 for rc in rcs if rc != 0)

    async def bare():
        # the plain command, no wrapper, F at a time
        sem = asyncio.Semaphore(forks)
        async def one():
            async with sem:
                proc = await asyncio.create_subprocess_exec(
                    "/bin/bash", "-c", "true", stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                return await proc.wait()
        rcs = await asyncio.gather(*(one() for _ in range(njobs)))
        return sum(1 for rc in rcs if rc != 0)

    if mode in ("floor", "bare"):
        import asyncio as _a
        _a.set_event_loop_policy(_a.DefaultEventLoopPolicy())
    start_cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if mode == "floor":
        bad = asyncio.run(floor())
    elif mode == "bare":
        bad = asyncio.run(bare())
    else:
        import logging
        import xqute  # noqa: F401  (sets the loop policy as a user would get it)
        logging.getLogger("XQUTE").setLevel(logging.WARNING)
        bad = asyncio.get_event_loop_policy().new_event_loop().run_until_complete(
            with_xqute(usage=mode != "xqute-nousage"))
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


def prepare_floor(workdir: Path, njobs: int) -> None:
    """Write the wrappers this package would write, outside the timed part."""
    sys.path.insert(0, str(ROOT))
    from xqute.job import Job
    from xqute.schedulers.local_scheduler import LocalScheduler

    sched = LocalScheduler(str(workdir))
    paths = []
    for i in range(njobs):
        job = Job(i, ["true"], sched.workdir)
        os.makedirs(job.metadir, exist_ok=True)
        path = job.metadir / sched.wrapped_script_name
        path.write_text(sched.wrap_job_script(job))
        paths.append(str(path))
    (workdir / "scripts.txt").write_text("\n".join(paths) + "\n")


def run_one(
    python: str, mode: str, njobs: int, forks: int, timeout: float, ours: bool, where: str | None = None
) -> dict:
    """``ours``: import xqute from this checkout (else whatever ``python`` has);
    ``where``: the folder to make the workdir in (default: $TMPDIR or /tmp)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"xqbench-{mode}-", dir=where))
    try:
        if mode == "floor":
            prepare_floor(workdir, njobs)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["XQUTE_LOG_LEVEL"] = "WARNING"
        if ours:
            env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.run(
            [python, "-c", MEASURE, mode, str(njobs), str(forks), str(workdir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(workdir),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--forks", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; the median is shown")
    parser.add_argument("--no-xqute2", action="store_true", help="skip xqute 2.2.1 (it is slow)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument(
        "--dir", default=None,
        help="where to make the workdirs (default: $TMPDIR or /tmp); file creation costs "
        "differ a lot between file systems, and every job creates a few files",
    )
    args = parser.parse_args()

    contenders = [
        ("xqute", sys.executable),
        ("xqute, usage off", sys.executable),
        ("floor", sys.executable),
        ("bare floor", sys.executable),
    ]
    if not args.no_xqute2:
        py2 = subprocess.run(
            ["bash", str(HERE / "xqute2-venv.sh")], capture_output=True, text=True, check=True
        ).stdout.strip()
        contenders.append(("xqute 2.2.1", py2))

    probe_before = file_costs(args.dir)
    modes = {"xqute": "xqute", "xqute, usage off": "xqute-nousage", "floor": "floor",
             "bare floor": "bare", "xqute 2.2.1": "xqute"}
    runs: dict[str, list[dict]] = {mode: [] for mode, _ in contenders}
    for _ in range(args.repeat):
        for mode, python in contenders:
            result = run_one(
                python, modes[mode], args.jobs, args.forks, args.timeout,
                ours=mode != "xqute 2.2.1", where=args.dir,
            )
            if mode.startswith("xqute"):
                expected = "2.2.1" if mode == "xqute 2.2.1" else "3"
                assert result["version"].startswith(expected), (mode, result["version"])
            runs[mode].append(result)
            print(f"  {mode}: {result['wall']:.2f} s", file=sys.stderr, flush=True)
    rows = []
    for mode, _ in contenders:
        done = runs[mode]
        wall = statistics.median(r["wall"] for r in done)
        rows.append(
            (
                mode,
                wall,
                args.jobs / wall,
                1000 * statistics.median(r["cpu"] for r in done) / args.jobs,
                1000 * statistics.median(r["child_cpu"] for r in done) / args.jobs,
                max(r["maxrss_kb"] for r in done) / 1024,
                max(r["failed"] for r in done),
            )
        )

    probe_after = file_costs(args.dir)
    floor_wall = next(r[1] for r in rows if r[0] == "floor")
    bare_wall = next(r[1] for r in rows if r[0] == "bare floor")
    where = args.dir or tempfile.gettempdir()
    print(
        f"\n{args.jobs} trivial jobs (`true`), forks={args.forks}, median of {args.repeat} run(s), "
        f"{os.cpu_count()} CPUs, workdirs in {where}\n"
    )
    header = ("contender", "wall s", "jobs/s", "manager CPU ms/job", "jobs' CPU ms/job", "peak MB",
              "failed", "wall / floor", "wall / bare floor")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for mode, wall, rate, cpu, child, mem, failed in rows:
        print(
            f"| {mode} | {wall:.2f} | {rate:.1f} | {cpu:.2f} | {child:.2f} | {mem:.0f} | {failed} | {wall / floor_wall:.2f}x | {wall / bare_wall:.2f}x |"
        )
    print("\n" + describe(probe_before, probe_after))


if __name__ == "__main__":
    main()
