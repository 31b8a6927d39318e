"""Benchmark: N trivial jobs through the real local Grid Engine, this package
beside xqute 2.2.1.

For each package, one fresh interpreter feeds N jobs running ``true`` to
``Xqute("sge", forks=N)`` and runs them to the end. Measured: wall time of the
run, how many jobs ended with rc 0, and how many times each Grid Engine
command was called. The calls are counted by small wrapper scripts put first
on PATH: each appends its name to a log, then execs the real command, so Grid
Engine does all the real work.

Needs the cluster (``bash scripts/sge.sh start``) and, for the comparison,
the xqute 2.2.1 venv (made on first use by ``benchmarks/xqute2-venv.sh``).

    python benchmarks/bench_sge.py                 # 100 jobs, both packages
    python benchmarks/bench_sge.py -n 100 -r 3     # median of 3 runs each
    python benchmarks/bench_sge.py --only this

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("qsub", "qstat", "qacct", "qdel")

# Run in each package's own interpreter: both speak the 2.x API.
RUN_JOBS = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from pathlib import Path
    import xqute
    from xqute import Xqute

    njobs, workdir, result_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    async def run():
        xq = Xqute("sge", workdir=workdir, forks=njobs)
        for _ in range(njobs):
            await xq.feed(["true"])
        await xq.run_until_complete()

    started = time.monotonic()
    asyncio.run(run())
    wall = time.monotonic() - started
    ok = 0
    for index in range(njobs):
        rc_file = Path(workdir) / str(index) / "job.rc"
        ok += rc_file.exists() and rc_file.read_text().strip() == "0"
    Path(result_file).write_text(json.dumps(
        {"version": xqute.__version__, "wall": wall, "ok": ok}))
    """
)


def write_counting_wrappers(folder: Path, log: Path) -> None:
    """One wrapper per Grid Engine command: log the call, exec the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    for command in COMMANDS:
        real = shutil.which(command)
        if real is None:
            sys.exit(f"{command} is not on PATH: bash scripts/sge.sh start")
        wrapper = folder / command
        # one short O_APPEND write per call, so concurrent calls keep whole lines
        wrapper.write_text(
            "#!/bin/sh\n"
            f"echo {command} >> {shlex.quote(str(log))}\n"
            f"exec {shlex.quote(real)} \"$@\"\n"
        )
        wrapper.chmod(0o755)


def run_once(python: str, njobs: int, this_package: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sge-") as tmp:
        tmp_path = Path(tmp)
        log = tmp_path / "calls.log"
        log.touch()
        write_counting_wrappers(tmp_path / "bin", log)
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
            [python, str(script), str(njobs), str(tmp_path / "workdir"), str(result_file)],
            cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL,
        )
        result = json.loads(result_file.read_text())
        calls = log.read_text().split()
        for command in COMMANDS:
            result[command] = calls.count(command)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=100, help="jobs per run (100)")
    parser.add_argument("-r", "--repeat", type=int, default=1, help="runs per package (1)")
    parser.add_argument("--only", choices=("this", "xqute2"), help="measure one package only")
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

    contenders: list[tuple[str, str, bool]] = []
    if args.only in (None, "this"):
        contenders.append(("this package", sys.executable, True))
    if args.only in (None, "xqute2"):
        venv_python = subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "xqute2-venv.sh")],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        contenders.append(("xqute 2.2.1", venv_python, False))

    rows = []
    for label, python, this_package in contenders:
        runs = []
        for _ in range(args.repeat):
            runs.append(run_once(python, args.jobs, this_package))
            print(f"# {label}: {json.dumps(runs[-1])}", file=sys.stderr)
        rows.append((label, runs))

    print(f"\n{args.jobs} trivial jobs (`true`, forks={args.jobs}) on the local Grid Engine "
          f"(2 slots), median of {args.repeat} run(s):\n")
    print("| package | wall time (s) | jobs rc 0 | qsub | qstat | qacct | qdel |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, runs in rows:
        version = runs[0]["version"]
        cells = [f"{label} ({version})", f"{statistics.median(r['wall'] for r in runs):.1f}",
                 f"{min(r['ok'] for r in runs)}/{args.jobs}"]
        cells += [f"{statistics.median(r[c] for r in runs):g}" for c in COMMANDS]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
