"""The wrapper writes job.status and job.rc in place (no rename, no helper
process): readers, this project's and a 2.x client's plain
``int(open(path).read())``, must still read every state correctly."""

from __future__ import annotations

import os
import threading

from xqute import JobStatus, Xqute

FINAL = {JobStatus.FINISHED, JobStatus.FAILED}
VALID = {value for name, value in vars(JobStatus).items() if name.isupper() and isinstance(value, int)}


def _read_plain(path: str) -> int | None:
    """As a 2.x client reads a meta file: None only when it does not exist."""
    try:
        with open(path) as fh:
            return int(fh.read())
    except FileNotFoundError:
        return None


async def test_plain_readers_in_a_tight_loop_never_see_a_partial_status_or_rc(workdir):
    njobs = 1000
    xq = Xqute(workdir=workdir, forks=16)
    for _ in range(njobs):
        # rc 0, 1 or 2 by index; `bash` is a program, so the wrapper execs it
        await xq.feed(["bash", "-c", "exit $((XQUTE_JOB_INDEX % 3))"])

    stop = threading.Event()
    errors: list[str] = []
    seen_final: dict[int, tuple[int, int]] = {}
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            for index in range(njobs):
                meta = os.path.join(workdir, str(index))
                try:
                    status = _read_plain(os.path.join(meta, "job.status"))
                    rc = _read_plain(os.path.join(meta, "job.rc"))
                except ValueError as exc:  # empty or half-written: what must never be
                    errors.append(f"job {index}: {exc}")
                    continue
                reads[0] += 2
                if status is not None and status not in VALID:
                    errors.append(f"job {index}: status {status}")
                if status in FINAL:
                    # the rc lands before the final status: once that is seen,
                    # the rc is the job's own (not the -9 placeholder)
                    rc_after = _read_plain(os.path.join(meta, "job.rc"))
                    seen_final.setdefault(index, (status, rc_after))
                elif rc is not None and rc not in (-9, 0, 1, 2):
                    errors.append(f"job {index}: rc {rc} while status is {status}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        await xq.run_until_complete()
    finally:
        stop.set()
        thread.join(30)

    assert errors == []
    assert reads[0] > 4 * njobs  # the loop went round while the jobs ran
    assert len(seen_final) > 0
    for index, (status, rc) in seen_final.items():
        expected = index % 3
        assert rc == expected, (index, status, rc)
        assert status == (JobStatus.FINISHED if expected == 0 else JobStatus.FAILED)
    for job in xq.jobs:
        assert await job.get_rc() == job.index % 3
        # what a 2.x client reads at the end
        assert _read_plain(str(job.rc_file)) == job.index % 3
        assert _read_plain(str(job.status_file)) in FINAL
