"""Hypothesis-driven tests for every parser of scheduler output, and for the
directive lines the backends write.

Each backend reads its scheduler's answers through ``run_command``; here that
name is replaced in the backend's module by a stand-in returning generated
output (what ``run_command`` returns: text decoded with ``errors="replace"``,
an exit code, stderr), so each parser sees any input hypothesis can think of.
What must hold for every input: the backend either parses it or gives a clear
error of the kind its caller handles (``SubmissionError`` from a submission,
"unknown for now" from a query), never another exception type, since any other
exception out of a status round would bring the whole run down.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import string
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable
from unittest import mock
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from xqute.defaults import JobStatus
from xqute.job import Job
from xqute.scheduler import JobQuery, SubmissionError, check_jobname_prefix
from xqute.schedulers import container_scheduler, gbatch_scheduler, sge_scheduler, slurm_scheduler
from xqute.schedulers.container_scheduler import CLIENT_LOG_NAME, ContainerScheduler
from xqute.schedulers.gbatch_scheduler import GbatchScheduler
from xqute.schedulers.sge_scheduler import SgeScheduler, _parse_error_reasons, _parse_qacct
from xqute.schedulers.slurm_scheduler import SlurmScheduler
from xqute.schedulers.ssh_scheduler import launcher
from xqute.schedulers.ssh_scheduler.host import describe_ssh_error
from xqute.schedulers.ssh_scheduler.scheduler import SshScheduler
from xqute.utils import CommandResult, check_env_name

FAST = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
QUERY_STATES = {JobQuery.PENDING, JobQuery.RUNNING, JobQuery.ENDED, JobQuery.ERROR}

# ------------------------------------------------------------------ strategies
# What a CLI may print: any bytes, decoded as run_command decodes them.
raw_output = st.binary(max_size=400).map(lambda b: b.decode(errors="replace"))
# Short text of any characters a decoded output can hold (no lone surrogates).
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=16)
exit_codes = st.one_of(st.sampled_from([0, 0, 0, 1, 2, 127, 126, -1, 255]), st.integers(-300, 300))


# Error lines the backends look for, among others.
known_errors = st.sampled_from(
    [
        "sbatch: error: Socket timed out on send/recv operation",
        "squeue: error: Invalid job id specified",
        "error: commlib error: got select error (Connection refused)",
        "ERROR: (gcloud.batch.jobs.submit) ALREADY_EXISTS: job exists",
        "ERROR: (gcloud.batch.jobs.describe) NOT_FOUND: no such job",
        "ERROR: (gcloud.batch.jobs.submit) RESOURCE_EXHAUSTED: quota",
        "Exiting.",
    ]
)


def results(stdout: st.SearchStrategy[str]) -> st.SearchStrategy[CommandResult]:
    """A CommandResult whose stdout comes from ``stdout`` (or any bytes)."""
    return st.builds(
        CommandResult, exit_codes, st.one_of(stdout, raw_output), st.one_of(known_errors, any_text, raw_output)
    )


def lines(line: st.SearchStrategy[str], max_size: int = 8) -> st.SearchStrategy[str]:
    return st.lists(line, max_size=max_size).map("\n".join)


# Digits that str.isdigit() accepts but int() does not, and digits of other scripts.
odd_digits = st.sampled_from(["\u00b2", "\u00b9\u00b2", "\u0663\u0664", "\uff11\uff12", "9" * 5000, "0", "-1", "1e3"])


def run(coro):
    return asyncio.run(coro)


@contextmanager
def canned(module: Any, answer: Callable[[tuple[str, ...]], CommandResult]):
    """Replace ``module.run_command`` by ``answer(argv)``, recording the calls."""
    calls: list[tuple[str, ...]] = []

    async def fake_run_command(*args: str, **_: Any) -> CommandResult:
        calls.append(tuple(args))
        return answer(tuple(args))

    with mock.patch.object(module, "run_command", fake_run_command):
        yield calls


def check_answers(answers: Any, jobs: list[Job]) -> None:
    """A query's answer: a dict over (some of) the jobs, of well-formed JobQuery."""
    assert isinstance(answers, dict)
    assert set(answers) <= set(jobs)
    for query in answers.values():
        assert isinstance(query, JobQuery)
        assert query.state in QUERY_STATES
        assert isinstance(query.reason, str)


@pytest.fixture(scope="module")
def workdir_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parsers")


def fresh_dir(root: Path) -> Path:
    """A new folder per hypothesis example (examples share the module fixture)."""
    fresh_dir.count = getattr(fresh_dir, "count", 0) + 1
    path = root / f"wd {fresh_dir.count}"
    path.mkdir()
    return path


# ------------------------------------------------------------------ Slurm
SLURM_JIDS = ["101", "102", "103"]
SLURM_STATES = sorted(
    slurm_scheduler.PENDING_STATES | slurm_scheduler.RUNNING_STATES | slurm_scheduler.ENDED_STATES
    | slurm_scheduler.ERROR_STATES
) + ["CANCELLED by 0", "", "LEVITATING"]
slurm_field = st.one_of(st.sampled_from(SLURM_JIDS + SLURM_STATES + ["None", "0:0", "1:0", "BadConstraints"]), any_text)
slurm_line = st.one_of(
    st.lists(slurm_field, max_size=5).map("|".join),
    st.tuples(st.sampled_from(SLURM_JIDS), st.sampled_from(SLURM_STATES), any_text).map("|".join),
    st.tuples(
        st.sampled_from(SLURM_JIDS), st.sampled_from(SLURM_STATES), st.sampled_from(["0:0", "2:0", "", "x"]),
        st.sampled_from(["None", "TimeLimit", "", "a|b"]),
    ).map("|".join),
    any_text,
)


async def slurm_jobs(sched: SlurmScheduler, count: int) -> list[Job]:
    jobs = []
    for index, jid in zip(range(count), SLURM_JIDS):
        job = await sched.create_job(index, ["true"])
        job._jid = jid
        job._status = JobStatus.SUBMITTED  # followed by the scheduler
        jobs.append(job)
    return jobs


@FAST
@given(squeue=results(lines(slurm_line)), sacct=results(lines(slurm_line)), count=st.integers(1, 3))
def test_slurm_squeue_and_sacct_output_parses_or_means_unknown(workdir_root, squeue, sacct, count):
    sched = SlurmScheduler(fresh_dir(workdir_root), end_grace=0)

    def answer(argv):
        return squeue if argv[0] == "squeue" else sacct

    async def ask():
        jobs = await slurm_jobs(sched, count)
        with canned(slurm_scheduler, answer) as calls:
            answers = await sched.query_jobs(jobs)
        check_answers(answers, jobs)
        assert sum(1 for c in calls if c[0] == "squeue") == 1  # one call for all jobs
        if not squeue.ok and "invalid job id" not in squeue.stderr.lower():
            assert answers == {}  # a failed squeue concludes nothing
        readable = re.compile(r"[0-9]+\|[A-Z_]+(\|.*)?", re.ASCII)
        if squeue.ok and any(
            line.strip() and not readable.fullmatch(line.strip()) for line in squeue.stdout.splitlines()
        ):
            assert answers == {}  # nor does one that printed something else

    run(ask())


@FAST
@given(sbatch=results(st.one_of(lines(slurm_line, 3), odd_digits, st.sampled_from(["123", "123;cluster", "1\n2\n", " 77 "]))),
       squeue=results(lines(slurm_line, 3)))
def test_slurm_sbatch_output_gives_a_job_id_or_a_submission_error(workdir_root, sbatch, squeue):
    sched = SlurmScheduler(fresh_dir(workdir_root))

    async def submit():
        job = await sched.create_job(0, ["true"])
        with canned(slurm_scheduler, lambda argv: sbatch if argv[0] == "sbatch" else squeue):
            for _ in range(2):  # a second try takes the "maybe submitted" path
                try:
                    jid = await sched.submit_job(job)
                except SubmissionError as exc:
                    assert str(exc)
                    continue
                assert re.fullmatch(r"[0-9]+", jid), jid  # a job id squeue and scancel take

    run(submit())


@FAST
@given(scancel=results(raw_output))
def test_slurm_scancel_output_never_raises(workdir_root, scancel):
    sched = SlurmScheduler(fresh_dir(workdir_root))

    async def kill():
        jobs = await slurm_jobs(sched, 3)
        with canned(slurm_scheduler, lambda argv: scancel) as calls:
            await sched.kill_jobs(jobs)
        assert len(calls) == 1 and set(calls[0][1:]) == set(SLURM_JIDS)

    run(kill())


# ------------------------------------------------------------------ Grid Engine
SGE_JIDS = ["11", "12", "13"]
sge_state = st.one_of(st.sampled_from(["r", "qw", "hqw", "Eqw", "dr", "t", "Rq", "s", "S", "T", "E"]), any_text)
maybe_escaped = st.one_of(any_text.map(escape), any_text)


def sge_entry(names: list[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda jid, name, state: (
            f"<job_list state='running'><JB_job_number>{jid}</JB_job_number>"
            f"<JB_name>{name}</JB_name><state>{state}</state></job_list>"
        ),
        st.one_of(st.sampled_from(SGE_JIDS), maybe_escaped),
        st.one_of(st.sampled_from(names), maybe_escaped),
        sge_state.map(escape),
    )


def sge_xml(names: list[str]) -> st.SearchStrategy[str]:
    body = st.lists(st.one_of(sge_entry(names), maybe_escaped), max_size=6).map("".join)
    return st.one_of(
        body.map(lambda b: f"<?xml version='1.0'?><job_info><queue_info>{b}</queue_info><job_info>{b}</job_info></job_info>"),
        body.map(lambda b: f"<job_info>{b}"),  # cut short
        body.map(lambda b: f"<other>{b}</other>"),  # well-formed, not qstat's
        body,
    )


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + "]><job_info><job_list><JB_job_number>&lol9;</JB_job_number></job_list></job_info>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    "<job_info><job_list><JB_job_number>11</JB_job_number><JB_name>&e;</JB_name>"
    "<state>r</state></job_list></job_info>"
)
qacct_record = st.lists(
    st.one_of(
        st.sampled_from(["==============================================================", ""]),
        st.tuples(st.sampled_from(["jobnumber", "jobname", "failed", "exit_status", "qname"]),
                  st.one_of(st.sampled_from(SGE_JIDS + ["100 : qdel", "0", "137"]), any_text)).map(" ".join),
        any_text,
    ),
    max_size=12,
).map("\n".join)
qstat_j_output = lines(
    st.one_of(
        st.sampled_from(SGE_JIDS).map(lambda j: f"job_number:                 {j}"),
        any_text.map(lambda t: f"error reason    1:          {t}"),
        any_text,
    )
)


async def sge_jobs(sched: SgeScheduler, count: int) -> list[Job]:
    jobs = []
    for index, jid in zip(range(count), SGE_JIDS):
        job = await sched.create_job(index, ["true"])
        job._jid = jid
        jobs.append(job)
    return jobs


def sge_scheduler_for(root: Path) -> SgeScheduler:
    # qacct must exist on PATH for the scheduler to ask it: any binary will do,
    # run_command is replaced
    return SgeScheduler(fresh_dir(root), qacct_wait=0, kill_wait=0, qacct=sys.executable)


@FAST
@given(data=st.data(), count=st.integers(1, 3))
@example(data=None, count=2)  # the fixed nasty inputs below
def test_sge_qstat_xml_qstat_j_and_qacct_parse_or_mean_unknown(workdir_root, data, count):
    sched = sge_scheduler_for(workdir_root)
    names = [sched.job_name(Job(i, ["true"], sched.workdir)) for i in range(3)]
    if data is None:
        outputs = [CommandResult(0, text, "") for text in (BILLION_LAUGHS, EXTERNAL_ENTITY, "<" * 100_000, "<a>" * 50_000)]
    else:
        outputs = [data.draw(results(sge_xml(names)))]
    qstat_j = CommandResult(0, "", "") if data is None else data.draw(results(qstat_j_output))
    qacct = CommandResult(0, "", "") if data is None else data.draw(results(qacct_record))

    def answer_for(qstat_xml):
        def answer(argv):
            if argv[0] == sched.qstat and "-xml" in argv:
                return qstat_xml
            return qstat_j if argv[0] == sched.qstat else qacct
        return answer

    async def ask():
        jobs = await sge_jobs(sched, count)
        for qstat_xml in outputs:
            with canned(sge_scheduler, answer_for(qstat_xml)):
                answers = await sched.query_jobs(jobs)
            check_answers(answers, jobs)
            if not qstat_xml.ok or not qstat_xml.stdout.lstrip().startswith(("<?xml", "<job_info")):
                # failed, or not qstat's XML at all: nothing concluded
                assert answers == {}, qstat_xml
            for query in answers.values():
                assert "root:" not in query.reason  # no external entity was read

    run(ask())


@FAST
@given(qsub=results(st.one_of(st.sampled_from(["11", "11.1-4:1", "Your job 11 ('x') has been submitted"]), odd_digits, lines(any_text, 3))),
       qstat=results(sge_xml(["sge-x-0"])))
def test_sge_qsub_output_gives_a_job_id_or_a_submission_error(workdir_root, qsub, qstat):
    sched = sge_scheduler_for(workdir_root)

    async def submit():
        job = await sched.create_job(0, ["true"])
        with canned(sge_scheduler, lambda argv: qsub if argv[0] == sched.qsub else qstat):
            try:
                jid = await sched.submit_job(job)
            except SubmissionError as exc:
                assert str(exc)
                return
        assert re.fullmatch(r"[0-9]+", jid), jid  # a job number qstat and qdel take

    run(submit())


@FAST
@given(text=st.one_of(qacct_record, raw_output), jobs_text=st.one_of(qstat_j_output, raw_output))
def test_sge_qacct_and_qstat_j_text_parsers_never_raise(text, jobs_text):
    for number, record in _parse_qacct(text).items():
        assert isinstance(number, str) and isinstance(record, dict)
        reason = SgeScheduler._accounting_reason(number, record)
        assert number in reason
    for number, reason in _parse_error_reasons(jobs_text).items():
        assert isinstance(number, str) and isinstance(reason, str) and reason


@FAST
@given(qdel=results(raw_output), qstat=results(sge_xml(["x"])))
def test_sge_qdel_output_never_raises(workdir_root, qdel, qstat):
    sched = sge_scheduler_for(workdir_root)

    async def kill():
        jobs = await sge_jobs(sched, 3)
        with canned(sge_scheduler, lambda argv: qdel if argv[0] == sched.qdel else qstat) as calls:
            await sched.kill_jobs(jobs)
        assert [c for c in calls if c[0] == sched.qdel] == [(sched.qdel, *SGE_JIDS)]

    run(kill())


# ------------------------------------------------------------------ Google Batch
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(any_text, inner, max_size=3)),
    max_leaves=8,
)
BATCH_NAMES = ["gbatch-00000000-0", "gbatch-00000000-1"]
BATCH_STATES = sorted(
    gbatch_scheduler.PENDING_STATES | gbatch_scheduler.RUNNING_STATES | gbatch_scheduler.ENDED_STATES
) + ["SUCCEEDED", "WEIRD"]
batch_item = st.one_of(
    st.fixed_dictionaries(
        {
            "name": st.one_of(
                st.sampled_from(BATCH_NAMES).map(lambda n: f"projects/p/locations/l/jobs/{n}"), json_values
            ),
            "uid": st.one_of(st.sampled_from(["u-1", ""]), json_values),
            "status": st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {
                        "state": st.one_of(st.sampled_from(BATCH_STATES), json_values),
                        "statusEvents": st.one_of(
                            json_values,
                            st.lists(st.one_of(json_values, st.fixed_dictionaries({"description": json_values})), max_size=3),
                        ),
                    }
                ),
            ),
            "labels": st.one_of(json_values, st.dictionaries(st.sampled_from(["xqute-run"]), json_values)),
        }
    ),
    json_values,
)
batch_json = st.one_of(
    st.lists(batch_item, max_size=4).map(json.dumps),
    batch_item.map(json.dumps),
    st.just("[" * 3000 + "]" * 3000),  # deeper than json can follow
    st.just("1" * 5000),  # more digits than int() takes
)


def gbatch_scheduler_for() -> GbatchScheduler:
    sched = GbatchScheduler("gs://bucket/wd", project="p", location="l", end_grace=0, query_interval=1)
    sched._template  # noqa: B018 - built at construction
    return sched


def batch_jobs(sched: GbatchScheduler) -> list[Job]:
    jobs = []
    for index, name in enumerate(BATCH_NAMES):
        job = Job(index, ["true"], sched.workdir)
        job._jid = name
        jobs.append(job)
    return jobs


@FAST
@given(listed=results(batch_json))
def test_gbatch_list_json_parses_or_means_unknown(listed):
    sched = gbatch_scheduler_for()
    jobs = batch_jobs(sched)

    async def ask():
        with canned(gbatch_scheduler, lambda argv: listed) as calls:
            answers = await sched.query_jobs(jobs)
        check_answers(answers, jobs)
        assert len(calls) == 1
        try:
            data = json.loads(listed.stdout or "[]")
        except (ValueError, RecursionError):
            data = None
        if not listed.ok or not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            assert answers == {}  # failed or not a list of jobs: nothing concluded

    run(ask())


@FAST
@given(described=results(batch_json), ran=st.booleans())
def test_gbatch_describe_json_gives_a_state_or_a_submission_error(described, ran):
    sched = gbatch_scheduler_for()
    job = Job(0, ["true"], sched.workdir)

    async def ask():
        with canned(gbatch_scheduler, lambda argv: described):
            try:
                state, resource = await sched._describe_state(BATCH_NAMES[0])
                assert state is None or isinstance(state, str)
                assert isinstance(resource, dict)
            except SubmissionError as exc:
                assert str(exc)
            try:
                found = await sched.find_submitted(job, ran)
            except SubmissionError as exc:  # Batch could not be asked, and the job ran
                assert ran and str(exc)
                return
            assert found in (None, sched.batch_job_name(job))

    run(ask())


@FAST
@given(submitted=results(batch_json), described=results(batch_json))
def test_gbatch_submit_output_gives_a_job_name_or_a_submission_error(submitted, described):
    sched = gbatch_scheduler_for()
    job = Job(0, ["true"], sched.workdir)
    script = job.metadir / sched.wrapped_script_name

    async def no_script(_job):
        return script

    async def no_write(*_args, **_kwargs):
        return None

    def answer(argv):
        return submitted if "submit" in argv else described

    async def submit():
        with canned(gbatch_scheduler, answer), mock.patch.object(sched, "wrapped_job_script", no_script), \
                mock.patch.object(gbatch_scheduler, "write_meta", no_write), \
                mock.patch.object(gbatch_scheduler, "DELETION_CHECK_INTERVAL", 0), \
                mock.patch.object(sched, "deletion_timeout", 0.01):
            try:
                name = await sched.submit_job(job)
            except SubmissionError as exc:
                assert str(exc)
                return
        assert name == sched.batch_job_name(job)
        assert isinstance(sched._uids[name], str)

    run(submit())


# ------------------------------------------------------------------ ssh hosts
pid_line = st.one_of(
    st.tuples(st.one_of(st.integers(0, 2**22).map(str), odd_digits), any_text).map(" ".join),
    any_text,
)
number_text = st.one_of(st.integers(0, 2**22).map(str), odd_digits, any_text)
launch_line = st.one_of(
    st.tuples(st.sampled_from([launcher.PID_MARK, launcher.ERROR_MARK]), number_text, number_text).map(
        lambda t: f"{t[0]}{t[1]}:{t[2]}"
    ),
    any_text,
)


@FAST
@given(launched=st.one_of(raw_output, lines(launch_line)), stdout=st.one_of(raw_output, lines(pid_line)))
def test_ssh_launch_and_ps_output_parse_to_pids_or_nothing(launched, stdout):
    pids, errors = launcher.parse_launch_output(launched)
    assert all(isinstance(k, int) and k >= 0 and isinstance(p, int) and p > 0 for k, p in pids.items())
    assert all(isinstance(k, int) and k >= 0 and isinstance(why, str) for k, why in errors.items())
    alive = launcher.parse_alive_output(stdout)
    assert all(isinstance(p, int) and p > 0 and isinstance(args, str) for p, args in alive.items())
    # whatever was parsed goes back into a ps command line as digits only
    if alive:
        assert re.fullmatch(r"ps -o pid= -o args= -p [0-9,]+", launcher.alive_command(alive))


@FAST
@given(stderr=st.one_of(raw_output, lines(st.one_of(st.sampled_from(
    ["Warning: Permanently added 'h' (ED25519) to the list of known hosts.", "Permission denied (publickey).",
     "Host key verification failed.", "ssh: connect to host h port 22: Connection refused", "\r"]), any_text))))
def test_ssh_error_output_becomes_one_line(stderr):
    text, permanent = describe_ssh_error(stderr)
    assert text and "\n" not in text and isinstance(permanent, bool)


@FAST
@given(ps=results(lines(pid_line)), odd_jid=st.one_of(
    st.tuples(number_text, st.sampled_from(["@host-a", "@other", "", "@"])).map("".join), any_text))
def test_ssh_liveness_output_and_job_ids_parse_or_mean_unknown(workdir_root, ps, odd_jid):
    """The ps answer, and the job ids read back from jid files (which may hold
    anything after a crash)."""
    sched = SshScheduler(fresh_dir(workdir_root), ssh=sys.executable, servers=["host-a"])
    host = sched.servers["host-a"]
    jobs = []
    for index, jid in enumerate(("4242@host-a", "4343@host-a", odd_jid)):
        job = Job(index, ["true"], sched.workdir)
        job._jid = jid
        jobs.append(job)

    async def fake_run(command, input=None, timeout=None):
        return ps

    async def ask():
        with mock.patch.object(host, "run", fake_run):
            answers = await sched.query_jobs(jobs)
        await sched.close()  # its private socket folder
        check_answers(answers, jobs)
        if ps.rc not in (0, 1):
            assert set(answers) <= {jobs[2]}  # only a job whose id is unusable
        pid_text, _, label = odd_jid.partition("@")
        usable = re.fullmatch(r"[0-9]{1,10}", pid_text, re.ASCII) and int(pid_text) > 0
        if not (usable and label == "host-a"):
            assert answers[jobs[2]].state == JobQuery.ENDED
            assert "ssh job id" in answers[jobs[2]].reason or "not among" in answers[jobs[2]].reason

    run(ask())


# ------------------------------------------------------------------ containers
@pytest.fixture(scope="module")
def fake_docker(tmp_path_factory) -> str:
    """An executable named like docker, so the scheduler can be built; it is
    never run (run_command is replaced)."""
    path = tmp_path_factory.mktemp("bin") / "fake-docker"
    path.write_text("#!/bin/sh\nexit 99\n")
    path.chmod(0o755)
    return str(path)


container_line = st.one_of(
    st.tuples(st.sampled_from(["c-0", "c-1", "other"]),
              st.one_of(st.sampled_from(["running", "exited", "created", "Up 2 seconds ago", ""]), any_text)).map("\t".join),
    any_text,
)


@FAST
@given(ps=results(lines(container_line)), log=st.one_of(raw_output, lines(st.one_of(
    st.sampled_from(["# podman run ...", "Error: no such image", "docker: Error response from daemon: x"]), any_text))))
def test_container_runtime_output_parses_to_states_or_nothing(workdir_root, fake_docker, ps, log):
    sched = ContainerScheduler(fresh_dir(workdir_root), image="img", bin=fake_docker)

    async def ask():
        with canned(container_scheduler, lambda argv: ps) as calls:
            states = await sched._container_states(["c-0", "c-1"])
        assert len(calls) == 1
        assert set(states) <= {"c-0", "c-1"}
        assert all(isinstance(s, str) for s in states.values())
        if not ps.ok:
            assert states == {}
        job = await sched.create_job(0, ["true"])
        Path(job.metadir, CLIENT_LOG_NAME).write_text(log, errors="surrogateescape")
        for status in (None, 0, 1 << 8, 9):
            reason = sched._client_exit_reason(job, status)
            assert isinstance(reason, str) and reason

    run(ask())


# ------------------------------------------------------------------ directives
# the schedulers' own keyword arguments, which are not directives
RESERVED_KEYS = {
    name
    for cls in (SlurmScheduler, SgeScheduler, slurm_scheduler.Scheduler)
    for name in inspect.signature(cls.__init__).parameters
} | {"mounted_workdir", "poll_interval", "poll_interval_max", "submit_rate", "submit_retries"}
option_key = st.one_of(
    st.sampled_from(["p", "l", "pe", "mem", "time", "cpus_per_task", "N", "o", "e", "wd", "job-name", "v"]),
    st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=6).filter(
        lambda key: key not in RESERVED_KEYS
    ),
    st.sampled_from(["l\n", "p\n", "mem\n", "a b", "-l", "x\r", "x\0"]),
    any_text,
)
option_value = st.one_of(
    st.none(), st.booleans(), st.integers(),
    any_text,
    st.sampled_from(["4G\n#SBATCH --uid=0", "1\r", "a\0b", 'say "hi"', "a b", "$(touch x)", "`x`", "x\u2028y", "x\x0by", "x\x85y"]),
    st.lists(any_text, max_size=3),
)
path_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=10)


def header_lines(script: str) -> list[str]:
    """The wrapper's lines before its own first comment, split as bash and the
    schedulers split them (on newlines only)."""
    head = script.split("\n# Job ", 1)[0]
    return head.split("\n")


def expected_user_lines(options: dict) -> int:
    count = 0
    for value in options.values():
        values = value if isinstance(value, list) else [value]
        count += sum(1 for v in values if v is not None and v is not False)
    return count


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    backend=st.sampled_from(["slurm", "sge"]),
    options=st.dictionaries(option_key, option_value, max_size=3),
    prefix=st.one_of(st.none(), any_text, st.sampled_from(["ok", "a\n", "job.1+x"])),
    folder=path_text,
    cwd=st.one_of(st.none(), path_text.map(lambda p: "/data/" + p)),
)
def test_no_option_prefix_or_path_adds_a_line_to_the_wrapper_header(workdir_root, backend, options, prefix, folder, cwd):
    """Every line before the wrapper's code is a directive: whatever the keys,
    values, job-name prefix, workdir or cwd, none ends a directive line and
    starts another (a script line, or a directive of the user's choosing)."""
    cls, mark = (SlurmScheduler, "#SBATCH ") if backend == "slurm" else (SgeScheduler, "#$ ")
    workdir = workdir_root / "paths" / folder
    try:
        sched = cls(workdir, jobname_prefix=prefix, cwd=cwd, **{str(k): v for k, v in options.items()})
        job = Job(7, ["true"], sched.workdir)
        script = sched.wrap_job_script(job)
    except ValueError as exc:
        assert str(exc)  # refused with a message
        return
    except KeyError as exc:  # config is a Diot: 'a-b' and 'a_b' are one key
        assert "same attribute" in str(exc)
        return
    head = header_lines(script)
    assert head[0] == "#!/bin/bash"
    assert all(line.startswith(mark) for line in head[1:]), head
    assert not any(ch in "\r\0" for line in head for ch in line)
    # the user's options each gave their own lines, no more
    own = [line for line in head[1:] if line.split()[1].lstrip("-").split("=")[0] in
           {"job-name", "output", "error", "open-mode", "chdir", "N", "S", "cwd", "wd", "o", "e"}]
    assert len(head) - 1 - len(own) <= expected_user_lines(options)


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(any_text, st.sampled_from(["A\n", "A_1", "_", "1A", "A\n\n", "\nA"])))
def test_env_names_and_job_name_prefixes_are_whole_matches(name):
    """A trailing newline must not slip through a ``$``-anchored pattern."""
    try:
        check_env_name(name)
    except ValueError as exc:
        assert "environment variable name" in str(exc)
    else:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name, flags=re.ASCII)
    try:
        check_jobname_prefix(name)
    except ValueError as exc:
        assert "jobname_prefix" in str(exc)
    else:
        assert re.fullmatch(r"[\w.+-]+", name)
