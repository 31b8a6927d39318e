"""SgeScheduler parts no real Grid Engine can show: the directive lines it
writes, bad options, and fake qsub/qstat commands that hang, print garbage or
print no job id. These run on any machine (no Grid Engine needed)."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from xqute import Xqute
from xqute.scheduler import JobQuery, SubmissionError
from xqute.schedulers.sge_scheduler import (
    SgeScheduler,
    _parse_error_reasons,
    _parse_qacct,
    limit_cause,
    usage_figures,
)


def fake_command(folder: Path, name: str, body: str) -> str:
    """A shell script standing in for a Grid Engine command (name says fake)."""
    assert "fake" in name
    path = folder / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def directive_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#$ ")]


async def test_directives_from_options(workdir):
    sched = SgeScheduler(
        workdir,
        l=["h_rt=60", "h_vmem=1G"],
        notify=True,
        hold_jid=None,
        R=False,
        pe="smp 2",
        p=-5,
    )
    job = await sched.create_job(7, ["echo", "hi"])
    lines = directive_lines(sched.wrap_job_script(job))
    meta = job.metadir
    assert lines == [
        f"#$ -N {sched.job_name(job)}",
        "#$ -S /bin/bash",
        "#$ -cwd",
        f'#$ -o "{meta}/job.sge.stdout"',  # the workdir has a space: quoted
        f'#$ -e "{meta}/job.sge.stderr"',
        "#$ -l h_rt=60",
        "#$ -l h_vmem=1G",
        "#$ -notify",
        "#$ -pe smp 2",  # as written: qsub splits it into -pe smp 2
        "#$ -p -5",
    ]
    assert sched.job_name(job).startswith("sge-") and sched.job_name(job).endswith("-7")
    # the shebang stays first, directives right after it
    assert sched.wrap_job_script(job).startswith("#!/bin/bash\n#$ -N ")


async def test_cwd_and_user_overrides(workdir, tmp_path):
    sched = SgeScheduler(workdir, cwd=str(tmp_path / "a b"), N="mine", o="/tmp/o.txt",
                         e="/tmp/my errors")
    job = await sched.create_job(0, ["true"])
    lines = directive_lines(sched.wrap_job_script(job))
    assert f'#$ -wd "{tmp_path}/a b"' in lines
    assert "#$ -cwd" not in lines
    assert "#$ -N mine" in lines and sum(line.startswith("#$ -N") for line in lines) == 1
    assert "#$ -o /tmp/o.txt" in lines and sum(line.startswith("#$ -o") for line in lines) == 1
    assert '#$ -e "/tmp/my errors"' in lines


@pytest.mark.parametrize(
    "options, message",
    [
        ({"N": "a:b"}, "Invalid Grid Engine job name"),
        ({"l": "h_rt=1\nrm -rf /"}, "line break"),
        ({"bad key": 1}, "Invalid Grid Engine option"),
    ],
)
def test_bad_options_are_refused(workdir, options, message):
    with pytest.raises(ValueError, match=message):
        SgeScheduler(workdir, **options)


async def test_directive_rules_shared_with_slurm_apply_to_each_list_item(workdir):
    # xqute.directives: None/False leave an item out, True is the bare flag,
    # in a list as for a single value
    sched = SgeScheduler(workdir, l=["h_rt=60", None, False], m=("b", "e"), R=[True])
    job = await sched.create_job(0, ["true"])
    lines = directive_lines(sched.wrap_job_script(job))
    assert lines[-4:] == ["#$ -l h_rt=60", "#$ -m b", "#$ -m e", "#$ -R"]


async def test_an_option_key_added_after_set_up_is_checked_too(workdir):
    sched = SgeScheduler(workdir)
    job = await sched.create_job(0, ["true"])
    sched.config["x\nrm -rf /"] = 1  # a client edits config later
    with pytest.raises(ValueError, match="Invalid Grid Engine option"):
        sched.wrap_job_script(job)


async def test_path_qsub_cannot_take_is_refused(workdir, tmp_path):
    sched = SgeScheduler(workdir, cwd=str(tmp_path / 'say "hi"'))
    job = await sched.create_job(0, ["true"])
    with pytest.raises(ValueError, match="double quote"):
        sched.wrap_job_script(job)


async def test_missing_qsub_is_a_clear_error(workdir):
    xq = Xqute("sge", workdir=workdir, scheduler_opts={"qsub": "/no/such/qsub"})
    with pytest.raises(FileNotFoundError, match="qsub not found: '/no/such/qsub'"):
        await xq.feed(["true"])


async def test_garbage_from_qstat_means_unknown(workdir, tmp_path):
    qstat = fake_command(tmp_path, "fake-garbage-qstat", "echo '<job_info><job_list>'; exit 0\n")
    sched = SgeScheduler(workdir, qstat=qstat)
    job = await sched.create_job(0, ["true"])
    job._jid = "12"
    assert await sched.query_jobs([job]) == {}


async def test_failing_or_hanging_qstat_means_unknown(workdir, tmp_path):
    failing = fake_command(tmp_path, "fake-down-qstat",
                           "echo 'error: unable to contact qmaster' >&2; exit 1\n")
    hanging = fake_command(tmp_path, "fake-hanging-qstat", "exec sleep 30\n")
    for qstat in (failing, hanging):
        sched = SgeScheduler(workdir, qstat=qstat, command_timeout=0.5)
        job = await sched.create_job(0, ["true"])
        job._jid = "12"
        assert await sched.query_jobs([job]) == {}


async def test_states_from_qstat_xml(workdir, tmp_path):
    sched = SgeScheduler(workdir)
    jobs = [await sched.create_job(i, ["true"]) for i in range(5)]
    xml = ["<?xml version='1.0'?><job_info><queue_info>"]
    for number, (job, state) in enumerate(zip(jobs, ["r", "qw", "hqw", "dr", "t"]), start=100):
        job._jid = str(number)
        xml.append(
            f"<job_list state='x'><JB_job_number>{number}</JB_job_number>"
            f"<JB_name>{sched.job_name(job)}</JB_name><state>{state}</state></job_list>"
        )
    xml.append("</queue_info><job_info></job_info></job_info>")
    (tmp_path / "qstat.xml").write_text("".join(xml))
    sched.qstat = fake_command(tmp_path, "fake-canned-qstat", f"cat '{tmp_path}/qstat.xml'\n")
    answers = await sched.query_jobs(jobs)
    assert [answers[job].state for job in jobs] == [
        JobQuery.RUNNING, JobQuery.PENDING, JobQuery.PENDING, JobQuery.RUNNING, JobQuery.RUNNING,
    ]


async def test_same_number_other_name_is_not_our_job(workdir, tmp_path):
    """Job numbers restart with a new cluster: a listed number with another
    name means our job is gone (here: its rc file says it ended)."""
    sched = SgeScheduler(workdir)
    job = await sched.create_job(0, ["true"])
    job._jid = "5"
    await job.set_rc(0)
    xml = ("<job_info><queue_info><job_list><JB_job_number>5</JB_job_number>"
           "<JB_name>someone-else</JB_name><state>r</state></job_list></queue_info></job_info>")
    sched.qstat = fake_command(tmp_path, "fake-canned-qstat", f"echo '{xml}'\n")
    assert (await sched.query_jobs([job]))[job] == JobQuery(JobQuery.ENDED)


async def test_qsub_without_job_id_is_refused(workdir, tmp_path):
    qsub = fake_command(tmp_path, "fake-silent-qsub", "echo 'Your job is welcome'\n")
    sched = SgeScheduler(workdir, qsub=qsub)
    job = await sched.create_job(0, ["true"])
    with pytest.raises(SubmissionError, match="printed no job id") as info:
        await sched.submit_job(job)
    assert not info.value.transient


async def test_qsub_errors_transient_or_not(workdir, tmp_path):
    busy = fake_command(tmp_path, "fake-busy-qsub",
                        "echo 'Unable to run job: failed receiving gdi request' >&2; exit 1\n")
    refused = fake_command(tmp_path, "fake-refusing-qsub",
                           "echo 'Unable to run job: unknown resource \"x\"' >&2; "
                           "echo Exiting. >&2; exit 1\n")
    job = await SgeScheduler(workdir).create_job(0, ["true"])
    with pytest.raises(SubmissionError) as info:
        await SgeScheduler(workdir, qsub=busy).submit_job(job)
    assert info.value.transient
    with pytest.raises(SubmissionError, match='unknown resource "x"') as info:
        await SgeScheduler(workdir, qsub=refused).submit_job(job)
    assert not info.value.transient
    assert "Exiting." not in str(info.value)


async def test_hanging_qsub_that_got_through_is_not_submitted_twice(workdir, tmp_path):
    """qsub timed out after qmaster took the job: the job is found by name."""
    sched = SgeScheduler(workdir, command_timeout=0.5)
    job = await sched.create_job(3, ["true"])
    sched.qsub = fake_command(tmp_path, "fake-hanging-qsub", "exec sleep 30\n")
    xml = (f"<job_info><job_info><job_list><JB_job_number>42</JB_job_number>"
           f"<JB_name>{sched.job_name(job)}</JB_name><state>qw</state></job_list>"
           f"</job_info></job_info>")
    sched.qstat = fake_command(tmp_path, "fake-canned-qstat", f"echo '{xml}'\n")
    # the backend says the reply may be lost; the base class asks find_submitted
    with pytest.raises(SubmissionError, match="timed out") as info:
        await sched.submit_job(job)
    assert info.value.transient and info.value.ambiguous
    sched.submit_retries = 1
    assert await sched._submit_with_retries(job) == "42"
    # and when it did not get through, the timeout stays a transient error
    sched.qstat = fake_command(tmp_path, "fake-empty-qstat", "echo '<job_info/>'\n")
    assert await sched.find_submitted(job, ran=False) is None
    with pytest.raises(SubmissionError, match="timed out"):
        await sched._submit_with_retries(job)


def test_parse_qacct_records():
    text = textwrap.dedent("""\
        ==============================================================
        qname        all.q
        jobname      sge-abc-0
        jobnumber    2
        failed       100 : assumedly after job
        exit_status  137                  (Killed)
        ==============================================================
        qname        all.q
        jobname      sge-abc-1
        jobnumber    3
        failed       0
        exit_status  0
        """)
    records = _parse_qacct(text)
    assert records["2"]["failed"] == "100 : assumedly after job"
    assert records["2"]["exit_status"].startswith("137")
    assert records["3"]["jobname"] == "sge-abc-1"
    reason = SgeScheduler._accounting_reason("2", records["2"])
    assert "failed 100" in reason and "qdel" in reason


def test_parse_error_reasons():
    text = textwrap.dedent("""\
        ==============================================================
        job_number:                 6
        job_name:                   bad
        error reason          1:      11/23/2026 19:26:49 [0:29590]: error: can't open output file "/x": No such file or directory
        scheduling info:            Job is in error state
        ==============================================================
        job_number:                 7
        job_name:                   fine
        """)
    reasons = _parse_error_reasons(text)
    assert list(reasons) == ["6"]
    assert "can't open output file" in reasons["6"]


async def test_config_changed_after_creation_is_used(workdir):
    """2.x clients set ``scheduler.config`` keys after making the scheduler."""
    sched = SgeScheduler(workdir)
    job = await sched.create_job(0, ["true"])
    assert not any(line.startswith("#$ -q") for line in directive_lines(sched.wrap_job_script(job)))
    sched.config["q"] = "all.q"
    assert "#$ -q all.q" in directive_lines(sched.wrap_job_script(job))


# ------------------------------------------------------------------ resources
async def test_resources_become_directives(workdir):
    """cpus in the parallel environment ``pe_name``, memory as h_vmem per slot
    (rounded up), time as h_rt, excluded nodes as one hostname request; the
    same lines head an array's script."""
    sched = SgeScheduler(
        workdir, pe_name="make", resources={"cpus": 3, "memory": "1G", "time": "26h30m"}
    )
    jobs = []
    for index in range(2):
        job = await sched.create_job(index, ["true"])
        await sched.queue_job(job)
        job.resources = job.resources.excluding("node-1").excluding("n2.example.org")
        jobs.append(job)
    expected = [
        "#$ -pe make 3",
        "#$ -l h_vmem=342M",  # 1024M / 3 slots, rounded up
        "#$ -l h_rt=26:30:00",  # no days field in Grid Engine's time
        "#$ -l hostname=!node-1&!n2.example.org",
    ]
    lines = directive_lines(sched.wrap_job_script(jobs[0]))
    assert lines[5:] == expected  # after -N -S -cwd -o -e, before the user's
    assert directive_lines(sched.array_script(jobs, "arr"))[5:] == expected


async def test_a_raw_option_wins_with_one_warning(workdir, caplog):
    sched = SgeScheduler(
        workdir, resources={"cpus": 4, "memory": "2G", "time": 60},
        pe="smp 2", l=["h_vmem=1G,h_rt=120", "h=node7"],
    )
    caplog.set_level(logging.WARNING)
    for index in range(3):
        job = await sched.create_job(index, ["true"])
        await sched.queue_job(job)
        job.resources = job.resources.excluding("node-1")
        lines = directive_lines(sched.wrap_job_script(job))
        assert lines[5:] == ["#$ -pe smp 2", "#$ -l h_vmem=1G,h_rt=120", "#$ -l h=node7"]
    warnings = sorted(r.message for r in caplog.records if "overrides resources" in r.message)
    assert len(warnings) == 4, warnings  # cpus, memory, time, exclude_nodes: once each
    assert any("'pe'" in w and "'cpus'" in w for w in warnings)


async def test_memory_per_slot_follows_a_raw_pe(workdir):
    sched = SgeScheduler(workdir, resources={"cpus": 8, "memory": "1000M"}, pe="mpi 4")
    job = await sched.create_job(0, ["true"])
    await sched.queue_job(job)
    assert "#$ -l h_vmem=250M" in directive_lines(sched.wrap_job_script(job))


@pytest.mark.parametrize("pe_name", ["smp 4", "smp\nrm -rf /", "", "smp,mpi", 4])
def test_a_bad_pe_name_is_refused_before_any_job(workdir, pe_name):
    with pytest.raises(ValueError, match="pe_name"):
        SgeScheduler(workdir, pe_name=pe_name, resources={"cpus": 2})


def test_gpus_are_refused_before_any_job(workdir):
    with pytest.raises(ValueError, match="GPU"):
        SgeScheduler(workdir, resources={"gpus": 1})
    SgeScheduler(workdir, resources={"gpus": 0})  # none asked: nothing to map


async def test_an_allocation_refused_under_h_vmem_is_oom(workdir):
    """The program's own words in its stderr tell an allocation past h_vmem;
    without a memory limit the same words are a plain failure."""
    limited = SgeScheduler(workdir, resources={"memory": "300M"})
    free = SgeScheduler(workdir)
    job = await limited.create_job(0, ["true"])
    await limited.queue_job(job)
    Path(job.stderr_file).write_text("Traceback (most recent call last):\nMemoryError\n")
    assert await limited.exit_cause(job, 1) == "oom"
    assert await free.exit_cause(job, 1) == "oom"  # job.resources still asks 300M
    job.resources = free.resources
    assert await free.exit_cause(job, 1) == "failed"
    Path(job.stderr_file).write_text("no such file\n")
    job.resources = limited.resources
    assert await limited.exit_cause(job, 1) == "failed"
    assert await limited.exit_cause(job, 0) == "ok"


# qacct's records (Grid Engine 8.1.9) of jobs killed over h_rt and over
# h_vmem (two processes of 200 MB under h_vmem=300M), and of one that ran
QACCT_KILLED = """\
==============================================================
qname        all.q
hostname     vm
jobname      xqexp-rt
jobnumber    26146
taskid       undefined
slots        1
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  137                  (Killed)
ru_wallclock 4s
ru_maxrss    4.523KB
cpu          0.011s
maxvmem      4.746MB
category     -l h_rt=3
==============================================================
qname        all.q
hostname     vm
jobname      xqexp-two
jobnumber    26149
taskid       undefined
slots        1
failed       37  : qmaster enforced h_rt, h_cpu, or h_vmem limit
exit_status  137                  (Killed)
ru_wallclock 3s
ru_maxrss    4.488KB
cpu          1.250s
maxvmem      319.008MB
category     -l h_vmem=300M
==============================================================
qname        all.q
hostname     vm
jobname      xqexp-use
jobnumber    26148
taskid       undefined
slots        2
failed       0
exit_status  0
ru_wallclock 4s
ru_maxrss    207.934KB
cpu          1.654s
maxvmem      211.027MB
category     -l h_rt=65,h_vmem=200M,hostname=!nodeA&!nodeB -pe smp 2
"""


def test_causes_and_figures_from_qacct():
    records = _parse_qacct(QACCT_KILLED)
    assert limit_cause(records["26146"]) == "timeout"
    assert limit_cause(records["26149"]) == "oom"
    assert limit_cause(records["26148"]) == ""
    # killed: the wrapper's rusage misses the killed processes; maxvmem is higher
    killed = usage_figures(records["26149"], full=True)
    assert killed["peak_memory_mb"] == 319.0 and killed["sources"]["peak_memory_mb"] == "qacct maxvmem"
    assert killed["wall_s"] == 3 and killed["cpu_s"] == 1.25
    ran = usage_figures(records["26148"], full=False)
    # 8.1.9 prints ru_maxrss's kilobytes as if bytes: 207.934KB is 207934 KB
    assert ran["peak_memory_mb"] == round(207.934 * 1024 / 1024, 1) == 207.9
    assert ran["sources"] == {
        "peak_memory_mb": "qacct ru_maxrss", "peak_vmem_mb": "qacct maxvmem",
        "cpu_s": "qacct cpu", "host": "qacct hostname",
    }
    assert "wall_s" not in ran and ran["host"] == "vm"
