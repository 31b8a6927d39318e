"""What the progress plugin costs the manager.

1. The hook calls one job makes (queued, submitted, started, succeeded, and
   on_job_init), in CPU microseconds, with no plugin and with ProgressPlugin
   (counting only, as when the output is not a terminal): best of 3 x N calls.
2. End to end: N trivial local jobs, manager CPU per job and jobs/s, without the
   plugin, with it counting, and with the bar drawn into a (non-terminal) file.

    python benchmarks/bench_progress.py [--jobs 1000] [--forks 8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import shutil
import tempfile
import time

os.environ.setdefault("XQUTE_LOG_LEVEL", "ERROR")

from xqute import Xqute, plugin  # noqa: E402
from xqute.job import Job  # noqa: E402
from xqute.progress import ProgressPlugin  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def hook_cost(calls: int) -> None:
    job = Job(0, "true", tempfile.gettempdir())

    async def one_job() -> None:
        await plugin.hooks.on_job_init(None, job)
        await plugin.hooks.on_job_queued(None, job)
        await plugin.hooks.on_job_submitted(None, job)
        await plugin.hooks.on_job_started(None, job)
        await plugin.hooks.on_job_succeeded(None, job)

    for label, plugins in (
        ("no plugin", None),
        ("ProgressPlugin(display=False)", [ProgressPlugin(display=False)]),
    ):
        context = plugin.plugins_context(plugins)
        context.__enter__()
        try:
            best = float("inf")
            for _ in range(3):
                start = time.process_time()
                for _ in range(calls):
                    await one_job()
                best = min(best, (time.process_time() - start) / calls * 1e6)
        finally:
            context.__exit__(None, None, None)
        print(f"hooks of one job, {label:32s}: {best:6.1f} us CPU")


async def end_to_end(mode: str, jobs: int, forks: int) -> tuple[float, float]:
    workdir = tempfile.mkdtemp(prefix=f"xqute-bench-progress-{mode}-")
    plugins = None
    if mode == "counting":
        plugins = [ProgressPlugin(display=False)]
    elif mode == "bar":
        plugins = [ProgressPlugin(display=True, file=io.StringIO())]
    try:
        xqute = Xqute(workdir=workdir, forks=forks, plugins=plugins)
        cpu0, wall0 = cpu(), time.monotonic()
        for _ in range(jobs):
            await xqute.feed("true")
        await xqute.run_until_complete()
        return (cpu() - cpu0) / jobs * 1000, jobs / (time.monotonic() - wall0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--forks", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    asyncio.run(hook_cost(args.calls))
    for mode in ("none", "counting", "bar"):
        runs = sorted(asyncio.run(end_to_end(mode, args.jobs, args.forks)) for _ in range(3))
        cpu_ms, rate = runs[1]
        print(f"{args.jobs} jobs, forks {args.forks}, plugin {mode:8s}: manager CPU "
              f"{cpu_ms:5.2f} ms/job, {rate:5.0f} jobs/s (median of 3)")


if __name__ == "__main__":
    main()
