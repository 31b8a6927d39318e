"""How per-job cost holds as a run grows: 1,000, 10,000 and 100,000 `true`
jobs at forks 16 through the local scheduler, each size in a fresh process.

For each size the table gives the wall time, the wall per job and its ratio
to the smallest size's, the manager's CPU per job (user + sys of the manager
process), its peak RSS, and the time feeding took. A last row runs 16 long
jobs (`sleep`) and gives the share of a core the manager uses while they run
(its idle cost).

The 100,000 run takes minutes and is not part of the test command; its
table is in docs/benchmarks.md.

    python benchmarks/bench_scale.py [--sizes 1000,10000,100000] [--forks 16] [--dir DIR] [--profile N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from fsprobe import describe, file_costs

ROOT = Path(__file__).resolve().parent.parent

MEASURE = textwrap.dedent(
    """
    import asyncio, json, logging, resource, sys, time
    njobs, forks, workdir, sleep = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    import xqute
    from xqute import Xqute
    logging.getLogger("XQUTE").setLevel(logging.WARNING)

    async def run():
        xq = Xqute(workdir=workdir, forks=forks)
        t0 = time.perf_counter()
        cmd = ["sleep", str(sleep)] if sleep else ["true"]
        for _ in range(njobs):
            await xq.feed(cmd)
        fed = time.perf_counter() - t0
        if sleep:
            # the manager's CPU while the long jobs run (after they started)
            runner = asyncio.ensure_future(xq.run_until_complete())
            await asyncio.sleep(1.0)
            c0, w0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(sleep - 2.0)
            idle = (time.process_time() - c0) / (time.perf_counter() - w0)
            await runner
        else:
            await xq.run_until_complete()
            idle = None
        bad = sum(1 for job in xq.jobs if job._rc != 0)
        return fed, idle, bad

    profile_top = int(sys.argv[5])
    c0, w0 = time.process_time(), time.perf_counter()
    if profile_top:
        # CPU time (not wall) per function: where the manager's per-job cost goes
        import cProfile, io, pstats
        profiler = cProfile.Profile(time.process_time)
        fed, idle, bad = profiler.runcall(asyncio.run, run())
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(profile_top)
        print(out.getvalue(), file=sys.stderr)
    else:
        fed, idle, bad = asyncio.run(run())
    print(json.dumps({
        "wall": time.perf_counter() - w0,
        "cpu": time.process_time() - c0,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "fed": fed,
        "idle": idle,
        "failed": bad,
        "version": xqute.__version__,
    }))
    """
)


def run_one(njobs: int, forks: int, where: str | None, sleep: float = 0.0, profile_top: int = 0) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"xqscale-{njobs}-", dir=where))
    try:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE, str(njobs), str(forks), str(workdir / "wd"), str(sleep),
             str(profile_top)],
            capture_output=True, text=True, env=env, cwd=str(workdir),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{njobs} jobs failed:\n{proc.stderr[-2000:]}")
        if profile_top:
            print(f"\nProfile of {njobs} jobs (CPU seconds, profiler overhead included):\n{proc.stderr}",
                  file=sys.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--forks", type=int, default=16)
    parser.add_argument("--dir", default=None, help="where to make the workdirs (default: $TMPDIR or /tmp)")
    parser.add_argument("--idle-seconds", type=float, default=12.0, help="how long the idle jobs sleep")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="print the N functions the manager spends most CPU in, per size (to stderr; "
        "the profiler slows the run, so its table is not comparable)",
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    probe_before = file_costs(args.dir)
    rows = []
    for njobs in sizes:
        result = run_one(njobs, args.forks, args.dir, profile_top=args.profile)
        print(f"  {njobs}: {result['wall']:.1f} s", file=sys.stderr, flush=True)
        rows.append((njobs, result))
    idle = run_one(args.forks, args.forks, args.dir, sleep=args.idle_seconds)
    probe_after = file_costs(args.dir)

    base = rows[0][1]["wall"] / rows[0][0]
    where = args.dir or tempfile.gettempdir()
    print(f"\n`true` jobs at forks {args.forks}, {os.cpu_count()} CPUs, workdirs in {where}, xqute {rows[0][1]['version']}\n")
    header = ("jobs", "wall s", "wall ms/job", "vs first size", "manager CPU ms/job", "peak RSS MB", "feed s", "failed")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for njobs, r in rows:
        per_job = r["wall"] / njobs
        print(
            f"| {njobs} | {r['wall']:.1f} | {1000 * per_job:.2f} | {per_job / base:.2f}x | "
            f"{1000 * r['cpu'] / njobs:.2f} | {r['maxrss_mb']:.0f} | {r['fed']:.2f} | {r['failed']} |"
        )
    print(
        f"\nIdle: {args.forks} jobs sleeping {args.idle_seconds:.0f} s: the manager used "
        f"{100 * idle['idle']:.2f}% of a core while they ran."
    )
    print(describe(probe_before, probe_after))


if __name__ == "__main__":
    main()
