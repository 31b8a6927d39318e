"""What making files costs on the file system the workdirs go to.

Every job makes a folder and a few small files; where one file system takes
20 µs of CPU per file and another 500 µs (this happens on the same ext4 disk
from one minute to the next), a run's figures cannot be read without it. The
benchmarks print this probe before and after their runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time


def file_costs(where: str | None, count: int = 300) -> dict[str, float]:
    """Microseconds of CPU (user + sys) per ``mkdir`` and per small-file
    create (open, write, close) in a fresh folder under ``where``."""
    base = tempfile.mkdtemp(prefix="xqprobe-", dir=where)
    try:
        t0 = time.process_time()
        for index in range(count):
            os.mkdir(os.path.join(base, f"d{index}"))
        mkdir = time.process_time() - t0
        t0 = time.process_time()
        for index in range(count):
            fd = os.open(os.path.join(base, f"d{index}", "f"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.write(fd, b"0\n")
            os.close(fd)
        create = time.process_time() - t0
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"mkdir_us": 1e6 * mkdir / count, "create_us": 1e6 * create / count}


def describe(before: dict[str, float], after: dict[str, float]) -> str:
    """One line for under a table."""
    return (
        "File system probe (CPU per operation, before / after the runs): "
        f"mkdir {before['mkdir_us']:.0f} / {after['mkdir_us']:.0f} µs, "
        f"file create {before['create_us']:.0f} / {after['create_us']:.0f} µs."
    )
