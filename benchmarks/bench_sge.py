"""Benchmark: N trivial jobs through the real local Grid Engine: this package
with arrays, the same with ``array: False``, xqute 2.2.1, and a plain loop of
``qsub`` (the floor), side by side in one run.

For each package, one fresh interpreter feeds N jobs running ``true`` to
``Xqute("sge", forks=N)`` and runs them to the end. The floor submits the same
N jobs with ``qsub -b y true``, one after another, and polls ``qstat`` twice a
second until none is listed: what Grid Engine itself takes, with no manager.
Measured: wall time, how many jobs ended with rc 0, how many times each Grid
Engine command was called (status queries: ``qstat`` + ``qacct``), and the
manager's own CPU time (user + system of its process, not of the commands it
runs). The calls are counted by small wrapper scripts put first on PATH: each
appends its name to a log, then execs the real command, so Grid Engine does
all the real work. The contenders take turns, repeat by repeat, so a busy
spell on a shared machine does not land on one of them only.

Needs the cluster (``bash scripts/sge.sh start``) and, for the comparison,
the xqute 2.2.1 venv (made on first use by ``benchmarks/xqute2-venv.sh``).

    python benchmarks/bench_sge.py                      # 100 jobs, all four, once
    python benchmarks/bench_sge.py -n 1000              # the measured table
    python benchmarks/bench_sge.py -n 100 -r 3 --only arrays floor

Prints a Markdown table (medians over the repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from callcount import write_counting_shims

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("qsub", "qstat", "qacct", "qdel")
CONTENDERS = ("arrays", "no-arrays", "xqute2", "floor")
LABELS = {
    "arrays": "this package, arrays",
    "no-arrays": "this package, `array: False`",
    "xqute2": "xqute 2.2.1",
    "floor": "floor: plain `qsub` loop, no manager",
}

# Run in each package's own interpreter: both speak the 2.x API.
RUN_JOBS = textwrap.dedent(
    """
    import asyncio, json, resource, sys, time
    from pathlib import Path
    import xqute
    from xqute import Xqute

    njobs, workdir, result_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    opts = json.loads(sys.argv[4])

    async def run():
        xq = Xqute("sge", workdir=workdir, forks=njobs, scheduler_opts=opts)
        for _ in range(njobs):
            await xq.feed(["true"])
        await xq.run_until_complete()

    started = time.monotonic()
    asyncio.run(run())
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    ok = 0
    for index in range(njobs):
        rc_file = Path(workdir) / str(index) / "job.rc"
        ok += rc_file.exists() and rc_file.read_text().strip() == "0"
    Path(result_file).write_text(json.dumps({
        "version": xqute.__version__, "wall": wall, "ok": ok,
        "cpu": usage.ru_utime + usage.ru_stime,
    }))
    """
)


def count_calls(log: Path, result: dict) -> dict:
    calls = log.read_text().split()
    for command in COMMANDS:
        result[command] = calls.count(command)
    return result


def run_manager(python: str, njobs: int, this_package: bool, opts: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sge-") as tmp:
        tmp_path = Path(tmp)
        log = tmp_path / "calls.log"
        log.touch()
        write_counting_shims(tmp_path / "bin", COMMANDS, log, "bash scripts/sge.sh start")
        script = tmp_path / "run_jobs.py"
        script.write_text(RUN_JOBS)
        result_file = tmp_path / "result.json"
        env = dict(os.environ)
        env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["XQUTE_LOG_LEVEL"] = "WARNING"
        if this_package:
            env["PYTHONPATH"] = str(ROOT)
        else:
            env.pop("PYTHONPATH", None)
        # cwd: the temp dir, where xqute 2.x lets Grid Engine drop its .o/.e files
        subprocess.run(
            [python, str(script), str(njobs), str(tmp_path / "workdir"), str(result_file),
             json.dumps(opts)],
            cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL,
        )
        return count_calls(log, json.loads(result_file.read_text()))


def run_floor(njobs: int) -> dict:
    """``njobs`` plain ``qsub -b y true`` one after another, then ``qstat``
    twice a second until none of them is listed. Its CPU is the loop's own
    (this process), the qsub/qstat commands aside, as for the managers."""
    with tempfile.TemporaryDirectory(prefix="bench-sge-floor-") as tmp:
        tmp_path = Path(tmp)
        log = tmp_path / "calls.log"
        log.touch()
        write_counting_shims(tmp_path / "bin", COMMANDS, log, "bash scripts/sge.sh start")
        bin_dir = tmp_path / "bin"
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        jids = set()
        for _ in range(njobs):
            out = subprocess.run(
                [str(bin_dir / "qsub"), "-terse", "-b", "y", "-cwd", "-o", "/dev/null",
                 "-e", "/dev/null", "true"],
                cwd=tmp, capture_output=True, text=True, check=True,
            ).stdout
            jids.add(out.strip())
        while True:
            listed = subprocess.run(
                [str(bin_dir / "qstat"), "-u", os.environ.get("USER") or "*"],
                capture_output=True, text=True, check=True,
            ).stdout.split()
            if not jids & set(listed):
                break
            time.sleep(0.5)
        wall = time.monotonic() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
        result = {"version": "-", "wall": wall, "ok": None, "cpu": cpu}
        return count_calls(log, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=100, help="jobs per run (100)")
    parser.add_argument("-r", "--repeat", type=int, default=1, help="runs per contender (1)")
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, help="measure these only")
    args = parser.parse_args()

    up = subprocess.run(
        ["bash", str(ROOT / "scripts" / "sge.sh"), "status"], capture_output=True, text=True
    )
    if up.returncode != 0:
        sys.exit(f"Grid Engine is not up ({up.stdout.strip()}): bash scripts/sge.sh start")
    for line in subprocess.run(
        ["bash", str(ROOT / "scripts" / "sge.sh"), "env"], capture_output=True, text=True
    ).stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name and value:
            os.environ[name] = value
    slots = subprocess.run(
        ["qconf", "-sq", "all.q"], capture_output=True, text=True
    ).stdout.split("\nslots", 1)[-1].split("\n", 1)[0].strip() or "?"

    chosen = [c for c in CONTENDERS if args.only is None or c in args.only]
    runners = {}
    if "arrays" in chosen:
        runners["arrays"] = lambda: run_manager(sys.executable, args.jobs, True, {})
    if "no-arrays" in chosen:
        runners["no-arrays"] = lambda: run_manager(sys.executable, args.jobs, True, {"array": False})
    if "xqute2" in chosen:
        venv_python = subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "xqute2-venv.sh")],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        runners["xqute2"] = lambda: run_manager(venv_python, args.jobs, False, {})
    if "floor" in chosen:
        runners["floor"] = lambda: run_floor(args.jobs)

    runs: dict[str, list[dict]] = {label: [] for label in runners}
    for _ in range(args.repeat):
        for label, runner in runners.items():  # taking turns
            result = runner()
            result["load"] = os.getloadavg()[0]
            print(f"# {label}: {json.dumps(result)}", file=sys.stderr, flush=True)
            runs[label].append(result)

    print(f"\n{args.jobs} trivial jobs (`true`, forks={args.jobs}) on the local Grid Engine "
          f"(all.q: {slots} slots), median of {args.repeat} run(s):\n")
    print("| contender | wall time (s) | jobs rc 0 | qsub | status queries (qstat + qacct) "
          "| qdel | manager CPU (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, results in runs.items():
        name = LABELS[label]
        if label in ("arrays", "no-arrays"):
            name += f" ({results[0]['version']})"
        ok = ("-" if results[0]["ok"] is None
              else f"{min(r['ok'] for r in results)}/{args.jobs}")

        def median(key):
            return statistics.median(r[key] for r in results)

        queries = statistics.median(r["qstat"] + r["qacct"] for r in results)
        print(
            f"| {name} | {median('wall'):.1f} | {ok} | {median('qsub'):g} | {queries:g} "
            f"({median('qstat'):g} + {median('qacct'):g}) | {median('qdel'):g} "
            f"| {median('cpu'):.2f} |"
        )


if __name__ == "__main__":
    main()
