"""``resources`` on the real Grid Engine of ``scripts/sge.sh``: a job over its
memory ends as oom and its retry with twice the memory succeeds, a job over its
time ends as timeout and its retry asks for more, qacct's usage figures land in
the usage records (fetched for many jobs in one qacct call), and Grid Engine
grants the parallel environment and h_vmem asked for."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from tests.test_sge import counting_wrapper, sge  # noqa: F401  (autouse fixture)
from xqute import Xqute


def usage_of(path: Path) -> dict:
    return json.loads(path.read_text())


def script_lines(job) -> list[str]:
    return Path(job.metadir, "job.wrapped.sge").read_text().splitlines()


# a first trial that has run leaves this file; the second trial sees it
FIRST_OR_SECOND = 'if [ -e "$XQUTE_JOB_METADIR/tried" ]; then {second}; else touch "$XQUTE_JOB_METADIR/tried"; {first}; fi'


async def test_over_its_memory_a_job_ends_as_oom_and_its_retry_with_twice_succeeds(workdir):
    """h_vmem=300M (a setrlimit of the address space): allocating 450 MB fails
    (Python raises MemoryError, the job exits 1): cause oom. The retry asks
    for 600M, where 450 MB and Python's own ~30 MB fit."""
    allocate = "python3 -c 'b = bytearray(450 * 2**20); print(len(b))'"
    xq = Xqute(
        "sge", workdir=workdir, error_strategy="retry", num_retries=1,
        scheduler_opts={"resources": {"memory": "300M"}, "query_interval": 1},
    )
    job = await xq.feed(["bash", "-c", allocate])
    await xq.run_until_complete()
    first = usage_of(job.metadir / "job.retry" / "0" / "job.usage")
    assert first["cause"] == "oom", first
    assert first["rc"] == 1 and first["requested"] == {"memory": "300M"}
    assert "MemoryError" in (job.metadir / "job.retry" / "0" / "job.stderr").read_text()
    assert await job.get_rc() == 0, Path(job.stderr_file).read_text()
    assert Path(job.stdout_file).read_text() == f"{450 * 2**20}\n"
    second = usage_of(Path(job.usage_file))
    assert second["cause"] == "ok" and second["requested"] == {"memory": "600M"}
    assert "#$ -l h_vmem=600M" in script_lines(job)


async def test_over_its_time_a_job_ends_as_timeout_and_its_retry_asks_for_more(workdir):
    """h_rt=3: Grid Engine SIGKILLs the job (wrapper and all) after 3 s, so it
    leaves qstat without an rc file; qacct (failed 37, ru_wallclock >= h_rt)
    says timeout, and the retry asks for 1.5 times the time."""
    cmd = FIRST_OR_SECOND.format(first="sleep 120", second="echo second")
    xq = Xqute(
        "sge", workdir=workdir, error_strategy="retry", num_retries=1,
        scheduler_opts={"resources": {"time": 3}, "query_interval": 1, "qacct_wait": 2},
    )
    job = await xq.feed(["bash", "-c", cmd])
    await xq.run_until_complete()
    first = usage_of(job.metadir / "job.retry" / "0" / "job.usage")
    assert first["cause"] == "timeout", first
    assert first["requested"] == {"time": 3}
    # the wrapper was killed with the command: its wall time is qacct's
    assert first["sources"]["wall_s"] == "qacct ru_wallclock" and first["wall_s"] >= 2
    assert "failed 37" in (job.metadir / "job.retry" / "0" / "job.stderr").read_text()
    assert await job.get_rc() == 0, Path(job.stderr_file).read_text()
    assert Path(job.stdout_file).read_text() == "second\n"
    second = usage_of(Path(job.usage_file))
    assert second["cause"] == "ok" and second["requested"] == {"time": 5}
    assert "#$ -l h_rt=00:00:05" in script_lines(job)


async def test_usage_figures_come_from_qacct_in_one_call(workdir, tmp_path):
    """Each job holds 200 MB and burns 1.2 s of CPU in 2 slots with 1G:
    qacct's ru_maxrss (peak) and cpu land in its usage record; Grid Engine
    granted -pe smp 2 (NSLOTS), h_vmem=512M per slot and the excluded hosts
    (qacct's category).
    Asked afterwards for the three jobs at once, qacct is called once."""
    burn = (
        "python3 -c 'import time; b = bytearray(200 * 2**20); t = time.process_time()\n"
        "while time.process_time() - t < 1.2: pass'; echo $NSLOTS"
    )
    xq = Xqute(
        "sge", workdir=workdir, forks=3,
        scheduler_opts={"resources": {"cpus": 2, "memory": "1G"}, "array": False,
                        "query_interval": 1, "usage": "wait"},
    )
    jobs = [await xq.feed(["bash", "-c", burn]) for _ in range(3)]
    # as a retry after node failures would: hosts that do not exist here
    jobs[0].resources = jobs[0].resources.excluding("nodeA").excluding("node-b")
    await xq.run_until_complete()
    for job in jobs:
        assert await job.get_rc() == 0, Path(job.stderr_file).read_text()
        assert Path(job.stdout_file).read_text() == "2\n"
        usage = usage_of(Path(job.usage_file))
        assert usage["sources"]["peak_memory_mb"] == "qacct ru_maxrss", usage
        assert usage["peak_memory_mb"] >= 200, usage
        assert usage["sources"]["cpu_s"] == "qacct cpu" and usage["cpu_s"] >= 0.9, usage
        assert usage["host"] in (socket.gethostname(), "localhost"), usage
        assert usage["requested"]["cpus"] == 2 and usage["requested"]["memory"] == "1024M"
    jid = await jobs[0].get_jid()
    category = subprocess.run(["qacct", "-j", jid], capture_output=True, text=True).stdout
    assert "h_vmem=512M" in category and "-pe smp 2" in category, category
    assert "hostname=!nodeA&!node-b" in category, category

    log = tmp_path / "qacct.log"
    log.touch()
    sched = xq.scheduler
    sched.qacct = counting_wrapper(tmp_path / "bin", "qacct", log)
    jids = [str(job.jid) for job in jobs]
    assert len(set(jids)) == 3  # three Grid Engine jobs, not one array
    usage = await sched.query_usage(jids)
    assert sorted(usage) == sorted(jids)
    assert all(figures["peak_memory_mb"] >= 200 for figures in usage.values())
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and calls[0] == f"-j {sched._name_base()}-*", calls
