"""Benchmark: N trivial jobs through the real local Slurm, this package vs xqute 2.2.1.

For each variant it measures the wall time of ``Xqute("slurm").run_until_complete()``
over N jobs running ``true`` at ``--forks`` (50), the manager's own CPU time, and
how often Slurm's CLIs were called. The variants: this package with job arrays
(the default), the same with ``array: False`` (one ``sbatch`` per job), and
xqute 2.2.1 in its own venv. The calls are counted by wrapper scripts put first
on PATH: each appends its name to a log and execs the real binary, so Slurm does
the real work.

Needs the cluster: ``bash scripts/slurm.sh start`` (32 CPUs declared, so the
jobs are not queued behind 2 slots; MaxArraySize 100, so 1,000 jobs are 10
arrays). Run:

    python benchmarks/bench_slurm.py                 # 100 jobs, every variant, once
    python benchmarks/bench_slurm.py -n 1000         # the issue-14 figure
    python benchmarks/bench_slurm.py -n 100 -r 3 --only arrays,no-arrays
    python benchmarks/bench_slurm.py --usage -r 3    # usage records on vs off

``--usage`` runs this package twice per repeat, usage records on (sacct's
figures fetched inside the status rounds; the run's end makes no call) and off
(``usage: False``), and prints squeue and sacct calls, status rounds and wall
time side by side; then, for usage on, how many records one later
``complete_usage`` call (what ``xqute status --fetch-usage`` does) completes,
and its sacct calls (counted apart from the run's).

Each repeat also times the same number of plain ``sbatch --wrap true`` jobs,
submitted in a loop with no manager (the floor; ``--no-floor`` skips it), and the
variants take turns, so a busy spell on a shared machine hits all of them.
Prints a Markdown table (medians over the repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from callcount import write_counting_shims

ROOT = Path(__file__).resolve().parent.parent
SLURM_BINARIES = ("sbatch", "squeue", "sacct", "scontrol", "scancel")

# Runs in the package's own interpreter; both packages share the 2.x API.
RUNNER = textwrap.dedent(
    """
    import asyncio, json, os, resource, sys, time
    from pathlib import Path
    import xqute
    from xqute import Xqute

    njobs, workdir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    forks, opts = int(sys.argv[4]), json.loads(sys.argv[5])
    cmd = json.loads(sys.argv[6]) if len(sys.argv) > 6 else ["true"]

    async def main():
        xq = Xqute("slurm", workdir=workdir, forks=forks, scheduler_opts=opts)
        for _ in range(njobs):
            await xq.feed(cmd)
        await xq.run_until_complete()
        return xq.scheduler

    start = time.monotonic()
    scheduler = asyncio.run(main())
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rcs = []

    def records_from_sacct():
        count = 0
        for i in range(njobs):
            record = Path(workdir) / str(i) / "job.usage"
            if record.exists():
                count += "sacct" in json.loads(record.read_text()).get("sources", {}).values()
        return count

    for i in range(njobs):
        rc_file = Path(workdir) / str(i) / "job.rc"
        rcs.append(rc_file.read_text().strip() if rc_file.exists() else "missing")
    from_sacct = records_from_sacct()  # usage records with figures from sacct
    from_sacct_later = None
    if opts.get("usage") is True and hasattr(scheduler, "complete_usage"):
        # what `xqute status --fetch-usage` does a little later: one sacct
        # for the records the run left pending (its calls are logged apart)
        with open(os.environ["BENCH_CALL_LOG"], "a") as log:
            log.write("later-fetch\\n")
        time.sleep(2)
        asyncio.run(scheduler.complete_usage(range(njobs)))
        from_sacct_later = records_from_sacct()
    Path(out).write_text(json.dumps({
        "version": xqute.__version__, "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "succeeded": sum(rc == "0" for rc in rcs),
        "rounds": getattr(scheduler, "query_rounds", None),
        "from_sacct": from_sacct, "from_sacct_later": from_sacct_later,
    }))
    """
)


# variant -> (which package, scheduler_opts)
VARIANTS = {
    "arrays": ("this", {}),
    "no-arrays": ("this", {"array": False}),
    "xqute2": ("xqute2", {}),
    "usage-on": ("this", {"usage": True}),
    "usage-off": ("this", {"usage": False}),
}


def run_once(
    python: str, njobs: int, label: str, forks: int, opts: dict, cmd: list[str] | None = None
) -> dict:
    """One run of ``njobs`` jobs under ``python``; returns wall time and call counts."""
    # (a manager that crashed can leave files behind in the folder)
    with tempfile.TemporaryDirectory(prefix=f"bench-slurm-{label}-", ignore_cleanup_errors=True) as tmp:
        tmp_path = Path(tmp)
        call_log = tmp_path / "calls.log"
        call_log.touch()
        write_counting_shims(tmp_path / "shims", SLURM_BINARIES, call_log, "is Slurm installed (bash scripts/slurm.sh start)?")
        runner = tmp_path / "runner.py"
        runner.write_text(RUNNER)
        out = tmp_path / "result.json"
        env = dict(os.environ)
        env["PATH"] = f"{tmp_path / 'shims'}{os.pathsep}{env.get('PATH', '')}"
        env["XQUTE_LOG_LEVEL"] = "WARNING"
        env["BENCH_CALL_LOG"] = str(call_log)
        if label == "this":
            env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
        else:
            env.pop("PYTHONPATH", None)
        # cwd is the temp dir: xqute 2.x leaves Slurm's slurm-<id>.out files there.
        start = time.monotonic()
        proc = subprocess.run(
            [python, str(runner), str(njobs), str(tmp_path / "workdir"), str(out),
             str(forks), json.dumps(opts), json.dumps(cmd or ["true"])],
            cwd=tmp, env=env, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            # xqute 2.2.1 crashes on an empty squeue answer now and then
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"# {label} crashed: {last}", file=sys.stderr)
            result = {"version": "?", "wall": time.monotonic() - start, "cpu": float("nan"),
                      "succeeded": 0, "crashed": last}
        else:
            result = json.loads(out.read_text())
        calls, _, later = call_log.read_text().partition("later-fetch")
        for name in SLURM_BINARIES:
            result[name] = calls.split().count(name)
        result["sacct_later"] = later.split().count("sacct")
        return result


def run_floor(njobs: int) -> float:
    """Seconds for ``njobs`` plain ``sbatch --wrap true`` jobs, submitted in a
    loop, to leave the queue: what the cluster itself takes, with no manager."""
    start = time.monotonic()
    jids = [
        subprocess.run(
            ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"],
            capture_output=True, text=True, check=True,
        ).stdout.strip().split(";")[0]
        for _ in range(njobs)
    ]
    while subprocess.run(
        ["squeue", "-h", "-t", "PD,R,CG,CF", "--me", "-o", "%i"],
        capture_output=True, text=True,
    ).stdout.strip():
        time.sleep(0.2)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=100)
    parser.add_argument("-r", "--repeat", type=int, default=1)
    parser.add_argument("--forks", type=int, default=50)
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help=f"comma-separated variants of {', '.join(VARIANTS)}")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the plain-sbatch run that shows the cluster's own speed")
    parser.add_argument("--usage", action="store_true",
                        help="usage records on vs off (variants usage-on,usage-off; no floor)")
    parser.add_argument("--sleep", type=float, default=0,
                        help="jobs run `sleep SECONDS` instead of `true` (several status rounds)")
    args = parser.parse_args()
    cmd = ["sleep", f"{args.sleep:g}"] if args.sleep else ["true"]
    if args.usage:
        args.only, args.no_floor = "usage-on,usage-off", True

    status = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm.sh"), "status"], capture_output=True, text=True
    )
    if status.returncode != 0:
        sys.exit(f"Slurm is not up ({status.stdout.strip()}): bash scripts/slurm.sh start")

    variants = [name for name in args.only.split(",") if name]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(sorted(unknown))}; use {', '.join(VARIANTS)}")
    pythons = {"this": sys.executable}
    if "xqute2" in variants:
        pythons["xqute2"] = subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "xqute2-venv.sh")],
            capture_output=True, text=True, check=True,
        ).stdout.strip()

    # Alternate the variants run by run, so a busy spell on a shared machine
    # does not land on one variant only.
    runs_by_label: dict[str, list[dict]] = {label: [] for label in variants}
    floors = []
    for _ in range(args.repeat):
        if not args.no_floor:
            floors.append(run_floor(args.jobs))
            print(f"# floor (plain sbatch loop): {floors[-1]:.1f} s, "
                  f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        for label in variants:
            package, opts = VARIANTS[label]
            run = run_once(pythons[package], args.jobs, package, args.forks, opts, cmd)
            run["load"] = os.getloadavg()[0]
            print(f"# {label}: {json.dumps(run)}", file=sys.stderr)
            runs_by_label[label].append(run)

    if args.usage:
        print_usage_table(args, runs_by_label, cmd)
        return
    print(f"\n{args.jobs} trivial jobs (`true`) through the local Slurm at forks "
          f"{args.forks}, median of {args.repeat} run(s):\n")
    print("| variant | wall time (s) | jobs rc 0 | submit calls (sbatch) | status queries "
          "(squeue + sacct) | manager CPU (s) | scontrol | scancel |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    if floors:
        print(f"| plain `sbatch --wrap true` loop, no manager | {statistics.median(floors):.1f} "
              f"| - | {args.jobs} | - | - | - | - |")
    for label, runs in runs_by_label.items():
        def median(key: str) -> float:
            return statistics.median(r[key] for r in runs)
        version = next((r["version"] for r in runs if r["version"] != "?"), "2.2.1")
        name = f"xqute {version}" + ("" if label == "xqute2" else f" ({label})")
        crashed = sum("crashed" in r for r in runs)
        if crashed:
            name += f" ({crashed} of {len(runs)} runs crashed)"
        print(
            f"| {name} | {median('wall'):.1f} | {min(r['succeeded'] for r in runs)}/{args.jobs} "
            f"| {median('sbatch'):g} | {statistics.median(r['squeue'] + r['sacct'] for r in runs):g} "
            f"| {median('cpu'):.2f} | {median('scontrol'):g} | {median('scancel'):g} |"
        )


def later(runs: list[dict], njobs: int) -> str:
    """Records with sacct's figures after the later fetch, and its sacct calls."""
    if any(r.get("from_sacct_later") is None for r in runs):
        return "-"
    calls = statistics.median(r["sacct_later"] for r in runs)
    return f"{min(r['from_sacct_later'] for r in runs)}/{njobs} ({calls:g})"


def print_usage_table(
    args: argparse.Namespace, runs_by_label: dict[str, list[dict]], cmd: list[str]
) -> None:
    """Usage on vs off, side by side: status calls, rounds, wall time."""
    print(f"\n{args.jobs} jobs (`{' '.join(cmd)}`) through the local Slurm at forks "
          f"{args.forks}, usage records on vs off, median of {args.repeat} run(s) "
          f"(each run: {', '.join(runs_by_label)} in turn):\n")
    print("| usage | wall time (s) | jobs rc 0 | status rounds | squeue | sacct "
          "| status queries (squeue + sacct) | records with sacct's figures at the run's end "
          "| after one later fetch (sacct calls) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, runs in runs_by_label.items():
        def median(key: str) -> float:
            return statistics.median(r[key] for r in runs)
        print(
            f"| {label.split('-')[1]} | {median('wall'):.1f} "
            f"| {min(r['succeeded'] for r in runs)}/{args.jobs} | {median('rounds'):g} "
            f"| {median('squeue'):g} | {median('sacct'):g} "
            f"| {statistics.median(r['squeue'] + r['sacct'] for r in runs):g} "
            f"| {min(r['from_sacct'] for r in runs)}/{args.jobs} "
            f"| {later(runs, args.jobs)} |"
        )
    print("\nper run (squeue+sacct): " + "; ".join(
        f"{label} " + ", ".join(f"{r['squeue'] + r['sacct']}" for r in runs)
        for label, runs in runs_by_label.items()
    ))
    print("per run (records with sacct's figures): " + "; ".join(
        f"{label} " + ", ".join(f"{r['from_sacct']}" for r in runs)
        for label, runs in runs_by_label.items()
    ))


if __name__ == "__main__":
    main()
