"""N trivial jobs on a ``gs://`` workdir: storage requests, gcloud calls, wall time.

Two schedulers, each run by this package and by xqute 2.2.1 (from its own venv,
``benchmarks/xqute2-venv.sh``, with panpath's cloud extras added), each in a
fresh process, with default options:

- ``gbatch``: the real ``gcloud`` against the loopback Batch API of
  ``scripts/gbatch.sh`` (which runs the jobs here, syncing their GCS volume);
- ``local``: the local scheduler with the workdir in the bucket.

Storage requests are counted at the GCS emulator (its request log), less the
requests the fake Batch API made itself to sync the jobs' volumes (what gcsfuse
would do on a real VM), so the figure is the manager's (and, for the local
scheduler, its jobs' wrappers'). gcloud calls are counted by a wrapper script
passed as the ``gcloud`` option.

    bash scripts/gbatch.sh start
    python benchmarks/bench_cloud.py --jobs 20 [--schedulers gbatch local]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
INFRA = Path(os.environ.get("XQUTE_INFRA_DIR", "/tmp/xqute-infra"))
GCS_LOG = INFRA / "stores" / "gcs.log"

# What each contender runs in its own interpreter; prints one JSON line.
DRIVER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from xqute import Xqute
    scheduler, njobs, workdir, gcloud = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    queue_seconds = sys.argv[5]

    async def main():
        opts = {}
        if scheduler == "gbatch":
            opts = {"project": "xqute-test", "location": "us-central1", "gcloud": gcloud,
                    "labels": {"fake-batch-queue-seconds": queue_seconds}}
        xq = Xqute(scheduler, workdir=workdir, forks=njobs, scheduler_opts=opts)
        started = time.perf_counter()
        for i in range(njobs):
            await xq.feed(["bash", "-c", f"echo job {i}"])
        await xq.run_until_complete()
        wall = time.perf_counter() - started
        rcs = [await job.get_rc() for job in xq.jobs]
        print(json.dumps({"wall": wall, "ok": sum(rc == 0 for rc in rcs), "jobs": len(rcs)}))

    asyncio.run(main())
    """
)


def shell_env(script: str) -> dict[str, str]:
    out = subprocess.run(["bash", str(ROOT / "scripts" / script), "env"], capture_output=True,
                         text=True, check=True).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            env[key] = value.strip("'\"")
    return env


def gcs_requests() -> int:
    with open(GCS_LOG, errors="replace") as fh:
        return sum(1 for line in fh if ' HTTP/1.1" ' in line)


def fake_storage_requests(env: dict) -> int:
    with urllib.request.urlopen(env["FAKE_BATCH_API"] + "/fake/stats", timeout=30) as answer:
        return json.loads(answer.read())["storage"].get("http_requests", 0)


def run_one(python: str, scheduler: str, njobs: int, env: dict, tmp: Path, queue: int) -> dict:
    calls = tmp / f"gcloud-calls-{uuid.uuid4().hex[:6]}"
    counting_gcloud = tmp / "gcloud-counting"
    counting_gcloud.write_text(f'#!/bin/bash\necho "$1 $2 $3" >> "$XQ_BENCH_CALLS"\nexec gcloud "$@"\n')
    counting_gcloud.chmod(0o755)
    workdir = f"gs://{env['XQUTE_TEST_BUCKET']}/bench/{scheduler}-{uuid.uuid4().hex[:8]}/wd"
    storage_before, fake_before = gcs_requests(), fake_storage_requests(env)
    proc = subprocess.run(
        [python, "-c", DRIVER, scheduler, str(njobs), workdir, str(counting_gcloud), str(queue)],
        capture_output=True, text=True, timeout=3600, cwd=tmp,
        env={**os.environ, **env, "XQ_BENCH_CALLS": str(calls), "XQUTE_LOG_LEVEL": "WARNING"},
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    fake = fake_storage_requests(env) - fake_before
    result["storage_requests"] = gcs_requests() - storage_before - fake
    result["fake_sync_requests"] = fake
    lines = calls.read_text().splitlines() if calls.exists() else []
    result["gcloud_calls"] = len(lines)
    kinds: dict[str, int] = {}
    for line in lines:
        verb = line.split()[2] if len(line.split()) > 2 else line
        kinds[verb] = kinds.get(verb, 0) + 1
    result["gcloud_by_verb"] = kinds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--schedulers", nargs="+", default=["gbatch", "local"])
    parser.add_argument("--queue-seconds", type=int, default=5,
                        help="how long the fake Batch API keeps each job QUEUED (a real "
                        "one takes about a minute to start a VM; xqute 2.2.1 loses jobs "
                        "that end before its own submit call returns)")
    args = parser.parse_args()
    for script in ("stores.sh", "gbatch.sh"):
        if subprocess.run(["bash", str(ROOT / "scripts" / script), "status"]).returncode != 0:
            sys.exit(f"start it first: bash scripts/{script} start")
    env = {**shell_env("gbatch.sh")}
    ours = str(ROOT / ".venv" / "bin" / "python")
    if not Path(ours).exists():
        ours = sys.executable
    theirs = subprocess.run(["bash", str(HERE / "xqute2-venv.sh")], capture_output=True,
                            text=True, check=True).stdout.strip()
    # xqute 2.2.1 reaches gs:// through panpath's cloud clients
    if subprocess.run([theirs, "-c", "import gcloud.aio.storage, google.cloud.storage"],
                      capture_output=True).returncode != 0:
        subprocess.run([theirs, "-m", "pip", "install", "-q", "panpath[all]"], check=True)

    print(f"{args.jobs} jobs (echo), gs:// workdir, forks {args.jobs}, default options; "
          f"gbatch jobs queued {args.queue_seconds} s")
    print(f"{'scheduler':9} {'contender':12} {'wall s':>7} {'ok':>5} {'storage req':>11} "
          f"{'gcloud':>6}  gcloud calls by verb")
    with tempfile.TemporaryDirectory(prefix="xqute-bench-cloud-") as tmp:
        for scheduler in args.schedulers:
            for label, python in (("xqute", ours), ("xqute 2.2.1", theirs)):
                r = run_one(python, scheduler, args.jobs, env, Path(tmp), args.queue_seconds)
                if "error" in r:
                    print(f"{scheduler:9} {label:12} could not run: {r['error']}")
                    continue
                print(f"{scheduler:9} {label:12} {r['wall']:7.1f} {r['ok']:>2}/{r['jobs']:<2} "
                      f"{r['storage_requests']:>11} {r['gcloud_calls']:>6}  "
                      f"{json.dumps(r['gcloud_by_verb'], sort_keys=True)}")


if __name__ == "__main__":
    main()
