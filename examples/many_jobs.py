"""A real run end to end: hundreds of jobs through the local scheduler.

Each job computes a small checksum of its own input; one in fifty fails on
purpose, and the run retries it once. A summary is printed at the end.
"""

import asyncio
import sys
import time

from xqute import JobStatus, Xqute


async def main(njobs: int = 500, forks: int = 8, workdir: str = "./.xqute-example") -> int:
    start = time.monotonic()
    xqute = Xqute(forks=forks, workdir=workdir, error_strategy="retry", num_retries=1)
    for i in range(njobs):
        script = 'printf "%s" "$INPUT" | sha256sum | cut -c1-16; [ $(( XQUTE_JOB_INDEX % 50 )) -ne 49 ]'
        await xqute.feed(["bash", "-c", script], envs={"INPUT": f"input number {i}"})
    await xqute.run_until_complete()
    elapsed = time.monotonic() - start

    done = [job for job in xqute.jobs if job.status == JobStatus.FINISHED]
    failed = [job for job in xqute.jobs if job.status == JobStatus.FAILED]
    retried = sum(job.trial_count for job in xqute.jobs)
    print(f"\n{njobs} jobs at forks={forks} in {elapsed:.2f} s ({njobs / elapsed:.0f} jobs/s)")
    print(f"  succeeded: {len(done)}   failed: {len(failed)}   retries: {retried}")
    print(f"  job 0 printed: {open(xqute.jobs[0].stdout_file).read().strip()}")
    if failed:
        print(f"  failed jobs (rc 1 on purpose): {[job.index for job in failed]}")
        print(f"  their files, and the failed first trial's under job.retry/0/: {failed[0].metadir}")
    return 0 if len(done) + len(failed) == njobs else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*(int(a) for a in sys.argv[1:3]))))
