"""The manager, jobs, hooks and the local scheduler, end to end with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

from conftest import ROOT, make_active_counter, processes_with
from xqute import Job, JobStatus, Xqute, plugin


def read(path) -> str:
    return Path(path).read_text()


async def run_jobs(workdir, cmds, **kwargs) -> Xqute:
    xq = Xqute(workdir=workdir, **kwargs)
    for cmd in cmds:
        await xq.feed(cmd)
    await xq.run_until_complete()
    return xq


# ---------------------------------------------------------------- basics
async def test_a_metadir_removed_after_the_job_was_fed_is_made_again(workdir):
    """A new metadir is not cleaned before its first trial (nothing is in it);
    one a client removed in between must still be made again."""
    import shutil

    xq = Xqute(workdir=workdir)
    await xq.feed(["echo", "again"])
    shutil.rmtree(xq.jobs[0].metadir)
    await xq.run_until_complete()
    assert xq.jobs[0].status == JobStatus.FINISHED
    assert read(xq.jobs[0].stdout_file) == "again\n"


async def test_jobs_run_and_record_output_rc_and_status(workdir):
    xq = await run_jobs(workdir, ["echo hello", ["bash", "-c", "echo oops >&2; exit 3"]], forks=2)
    ok, bad = xq.jobs
    assert read(ok.stdout_file) == "hello\n"
    assert await ok.get_rc() == 0
    assert await ok.get_status(refresh=True) == JobStatus.FINISHED
    assert "oops" in read(bad.stderr_file)
    assert await bad.get_rc() == 3
    assert await bad.get_status(refresh=True) == JobStatus.FAILED
    assert int(read(ok.jid_file)) > 0
    assert (ok.metadir / "job.wrapped.local").is_file()


async def test_meta_files_hold_exactly_what_the_contract_names(workdir):
    xq = await run_jobs(workdir, ["true"])
    job = xq.jobs[0]
    assert job.metadir == xq.scheduler.workdir / "0"
    names = {p.name for p in Path(job.metadir).iterdir()}
    assert {"job.stdout", "job.stderr", "job.status", "job.rc", "job.jid", "job.wrapped.local"} <= names
    # no temp files left behind by the atomic writes
    assert not [n for n in names if n.endswith(".tmp")]
    assert int(read(job.status_file)) == JobStatus.FINISHED
    assert int(read(job.rc_file)) == 0


async def test_command_not_found_fails_with_127_and_a_readable_message(workdir):
    xq = await run_jobs(workdir, ["no-such-program-xq --flag", "echo after"])
    missing, after = xq.jobs
    assert await missing.get_rc() == 127
    stderr = read(missing.stderr_file)
    assert "no-such-program-xq" in stderr and "not found" in stderr
    # the run went on
    assert await after.get_rc() == 0 and read(after.stdout_file) == "after\n"


async def test_timeout_stops_the_command_with_124(workdir):
    xq = await run_jobs(workdir, ["sleep 30"], scheduler_opts={"timeout": 0.5})
    job = xq.jobs[0]
    assert await job.get_rc() == 124
    assert "timed out" in read(job.stderr_file)


async def test_prescript_postscript_and_cwd(workdir, tmp_path):
    here = tmp_path / "run here"
    here.mkdir()
    xq = await run_jobs(
        workdir,
        [["bash", "-c", 'echo "$PRE" && pwd']],
        scheduler_opts={
            "prescript": "export PRE=from-prescript",
            "postscript": f"echo post > {str(tmp_path / 'post.txt')!r}",
            "cwd": str(here),
        },
    )
    job = xq.jobs[0]
    assert read(job.stdout_file).splitlines() == ["from-prescript", str(here)]
    assert read(tmp_path / "post.txt") == "post\n"


# ---------------------------------------------------------------- quoting
TRICKY = [
    "it's",
    'say "hi"',
    "\\$HOME and \\${PATH} and $(echo injected) and $ and $1 and $$",
    "`echo injected`",
    "line one\nline two",
    "*.txt ?",
    "semi; colon && amp | pipe > redirect",
    "back\\slash",
    "",
]


async def test_arguments_and_env_values_reach_the_job_exactly(workdir):
    (Path(workdir) / "a.txt").write_text("glob bait")
    cmd = [sys.executable, "-c", "import json,os,sys; print(json.dumps([sys.argv[1:], os.environ['TRICKY']]))", *TRICKY]
    xq = Xqute(workdir=workdir)
    await xq.feed(cmd, envs={"TRICKY": "\n".join(TRICKY)})
    await xq.run_until_complete()
    job = xq.jobs[0]
    import json

    args, env_value = json.loads(read(job.stdout_file))
    # the documented escape: \\$ passes a literal $ (env values are never expanded)
    assert args == [arg.replace("\\$", "$") for arg in TRICKY]
    assert env_value == "\n".join(TRICKY)
    assert not (Path(workdir) / "redirect").exists()


async def test_string_command_is_split_like_a_shell(workdir):
    xq = await run_jobs(workdir, ["""printf '%s|' 'a b' "c d" e"""])
    assert read(xq.jobs[0].stdout_file) == "a b|c d|e|"


def test_bad_env_name_and_nul_are_refused(workdir):
    with pytest.raises(ValueError, match="environment variable name"):
        Job(0, "true", workdir, envs={"BAD-NAME": "x"})
    with pytest.raises(ValueError, match="NUL"):
        Job(0, ["echo", "a\0b"], workdir)
    with pytest.raises(ValueError, match="NUL"):
        Job(0, "true", workdir, envs={"OK": "a\0b"})


# ---------------------------------------------------------------- bad input
async def test_bad_input_is_refused_before_any_job_starts(workdir, tmp_path):
    with pytest.raises(ValueError, match="Unknown scheduler"):
        Xqute("nosuch", workdir=workdir)
    with pytest.raises(ValueError, match="forks"):
        Xqute(workdir=workdir, forks=0)
    with pytest.raises(ValueError, match="error strategy"):
        Xqute(workdir=workdir, error_strategy="explode")
    blocker = tmp_path / "a file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        Xqute(workdir=blocker / "sub")



async def test_read_only_workdir_is_refused(tmp_path):
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(PermissionError, match="not writable"):
            Xqute(workdir=ro)
        return
    # root ignores mode bits: use a read-only bind of a tmpfs when we may mount
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {proc.stderr.decode().strip()}")
    try:
        with pytest.raises(PermissionError, match="not writable"):
            Xqute(workdir=ro)
    finally:
        subprocess.run(["umount", str(ro)])


def test_must_be_built_in_a_running_loop(workdir):
    with pytest.raises(RuntimeError):
        Xqute(workdir=workdir)


# ---------------------------------------------------------------- hooks
async def test_hook_order_for_every_job(workdir, recorder):
    rec, plugin_cls = recorder
    xq = await run_jobs(workdir, ["true", "false", "no-such-program-xq"], plugins=[plugin_cls], forks=3)
    for job in xq.jobs:
        hooks = rec.of(job.index)
        assert hooks[:4] == ["on_job_init", "on_job_queued", "on_job_submitting", "on_job_submitted"]
        end = "on_job_succeeded" if job.index == 0 else "on_job_failed"
        assert hooks[4:] == ["on_job_started", end]


async def test_vetoes_skip_submission_and_killing(workdir):
    class Veto:
        name = "veto_plugin"

        @plugin.impl
        async def on_job_submitting(scheduler, job):
            return False if job.index == 1 else None

        @plugin.impl
        async def on_job_killing(scheduler, job):
            return False

    xq = await run_jobs(workdir, ["true", "touch should-not-exist"], plugins=[Veto])
    assert xq.jobs[0].status == JobStatus.FINISHED
    assert xq.jobs[1].status == JobStatus.QUEUED
    assert not (Path(workdir) / "1" / "job.wrapped.local").exists()


async def test_on_shutdown_false_keeps_the_run_going(workdir):
    class KeepGoing:
        name = "keep_going_plugin"

        @plugin.impl
        def on_shutdown(xqute, sig):
            return False

    xq = Xqute(workdir=workdir, plugins=[KeepGoing])
    await xq.feed(["bash", "-c", "sleep 0.3; echo survived"])
    asyncio.get_running_loop().call_later(0.1, xq.cancel)
    await xq.run_until_complete()
    assert read(xq.jobs[0].stdout_file) == "survived\n"
    assert xq.jobs[0].status == JobStatus.FINISHED


async def test_plugin_context_is_left_when_the_run_completes(workdir, recorder):
    rec, plugin_cls = recorder
    xq = await run_jobs(workdir, ["true"], plugins=[plugin_cls])
    assert xq.plugin_context is not None
    assert plugin_cls.name not in plugin.get_enabled_plugin_names()
    assert rec.events  # it was active during the run


def test_hook_calls_skipped_only_while_no_plugin_implements_them():
    """Calls of hooks no plugin implements are skipped (xqute.plugin.implemented);
    plugins come and go with each run's plugin context, and a plugin that
    replaces a freed one (which may take its id) must be seen."""
    import gc

    from xqute.plugin import implemented

    if implemented("on_job_polling"):
        pytest.skip("a plugin installed here implements on_job_polling already")
    for round_ in range(60):
        attrs = {"name": f"polling_{round_}"}
        if round_ % 2:
            async def on_job_polling(scheduler, job, counter):
                pass

            attrs["on_job_polling"] = plugin.impl(on_job_polling)
        cls = type(f"Polling{round_}", (), attrs)
        with plugin.plugins_context([cls]):
            assert implemented("on_job_polling") == bool(round_ % 2), round_
        del cls, attrs
        gc.collect()  # frees the plugin, so the next one may take its id
    assert not implemented("on_job_polling")

    class Disabled:
        name = "polling_disabled"

        @plugin.impl
        async def on_job_polling(scheduler, job, counter):
            pass

    with plugin.plugins_context([Disabled]):
        assert implemented("on_job_polling")
        plugin.disable(Disabled.name)
        assert not implemented("on_job_polling")


async def test_jobcmd_hooks_put_code_in_the_wrapper(workdir):
    class Code:
        name = "code_plugin"

        @plugin.impl
        def on_jobcmd_init(scheduler, job):
            return "export FROM_INIT=yes"

        @plugin.impl
        def on_jobcmd_prep(scheduler, job):
            return 'cmd="$cmd extra-arg"'

        @plugin.impl
        def on_jobcmd_end(scheduler, job):
            return 'echo "end rc=$rc" >> "$XQUTE_JOB_METADIR/end.txt"'

    xq = await run_jobs(workdir, [["bash", "-c", 'echo "$FROM_INIT $0"']], plugins=[Code])
    job = xq.jobs[0]
    assert read(job.stdout_file) == "yes extra-arg\n"
    assert read(job.metadir / "end.txt") == "end rc=0\n"


async def test_on_job_polling_is_called_for_long_jobs(workdir):
    counters = []

    class Poll:
        name = "poll_plugin"

        @plugin.impl
        async def on_job_polling(scheduler, job, counter):
            counters.append(counter)

    await run_jobs(workdir, ["sleep 2.5"], plugins=[Poll])
    assert len(counters) >= 1 and counters == sorted(counters)


# ---------------------------------------------------------------- strategies
async def test_retry_backs_up_each_trial_and_requeues(workdir, recorder):
    rec, plugin_cls = recorder
    # fails on the first two trials, succeeds on the third
    counter = Path(workdir) / "count"
    script = f'n=$(cat "{counter}" 2>/dev/null || echo 0); echo $((n+1)) > "{counter}"; echo trial $n; [ $n -ge 2 ]'
    cmd = ["bash", "-c", script.replace("$", "\\$")]  # \$: bash's variables, not xqute's
    xq = await run_jobs(
        workdir, [cmd, "true"], error_strategy="retry", num_retries=3, plugins=[plugin_cls]
    )
    job = xq.jobs[0]
    assert job.status == JobStatus.FINISHED and job.trial_count == 2
    assert read(job.stdout_file) == "trial 2\n"
    backups = Path(job.metadir) / "job.retry"
    assert sorted(p.name for p in backups.iterdir()) == ["0", "1"]
    assert read(backups / "0" / "job.stdout") == "trial 0\n"
    assert int(read(backups / "1" / "job.rc")) == 1
    hooks = rec.of(0)
    assert hooks.count("on_job_failed") == 2 and hooks.count("on_job_queued") == 3
    assert hooks.count("on_job_submitted") == 3 and hooks[-1] == "on_job_succeeded"


async def test_retry_gives_up_after_num_retries(workdir):
    xq = await run_jobs(workdir, ["false"], error_strategy="retry", num_retries=2)
    job = xq.jobs[0]
    assert job.status == JobStatus.FAILED and job.trial_count == 2
    assert sorted(p.name for p in (Path(job.metadir) / "job.retry").iterdir()) == ["0", "1"]


async def test_forks_hold_with_retries(workdir):
    counter, plugin_cls = make_active_counter("count_plugin")
    cmds = [["bash", "-c", f"sleep 0.0{i % 5}; exit $(( $RANDOM % 3 == 0 ))"] for i in range(40)]
    xq = await run_jobs(workdir, cmds, forks=3, error_strategy="retry", num_retries=2, plugins=[plugin_cls])
    assert 2 <= counter.peak <= 3
    assert counter.active == 0
    assert all(JobStatus.is_final(job.status) for job in xq.jobs)


async def test_halt_stops_submitting_and_kills_running_jobs(workdir):
    marker = f"xq-halt-{os.getpid()}"
    cmds = [["bash", "-c", f"sleep 30 # {marker}"], ["bash", "-c", "sleep 0.2; exit 1"]] + [
        ["bash", "-c", "sleep 30"] for _ in range(3)
    ]
    kills = []
    real_kill, real_killpg = os.kill, os.killpg

    def spy_kill(pid, sig):
        kills.append(pid)
        return real_kill(pid, sig)

    def spy_killpg(pgid, sig):
        kills.append(pgid)
        return real_killpg(pgid, sig)

    os.kill, os.killpg = spy_kill, spy_killpg
    try:
        xq = await asyncio.wait_for(run_jobs(workdir, cmds, forks=2, error_strategy="halt"), 20)
    finally:
        os.kill, os.killpg = real_kill, real_killpg
    statuses = [job.status for job in xq.jobs]
    assert statuses[:2] == [JobStatus.FAILED, JobStatus.FAILED]
    assert statuses[2:] == [JobStatus.QUEUED] * 3
    assert processes_with(marker) == []
    # a library never signals its own process or process group
    assert os.getpid() not in kills and os.getpgrp() not in kills


async def test_kill_reaches_the_whole_process_group(workdir):
    marker = f"xq-group-{os.getpid()}"
    xq = Xqute(workdir=workdir)
    # two background children and a grandchild each; every one carries the marker
    child = f"sh -c 'sleep 60; true {marker}'"
    await xq.feed(["bash", "-c", f"{child} & {child} & wait"])
    seen = []

    def check_then_cancel():
        seen.extend(processes_with(marker))
        xq.cancel()

    asyncio.get_running_loop().call_later(0.5, check_then_cancel)
    await xq.run_until_complete()
    assert len(seen) >= 2  # they were there before the kill
    assert processes_with(marker) == []
    assert xq.jobs[0].status == JobStatus.FAILED


# ---------------------------------------------------------------- feeding
async def test_keep_feeding_and_stop_feeding_end_cleanly(workdir):
    loop = asyncio.get_running_loop()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xq = Xqute(workdir=workdir, forks=2)
        await xq.run_until_complete(keep_feeding=True)
        assert xq.is_feeding()
        for i in range(5):
            await xq.feed(["echo", str(i)])
            await asyncio.sleep(0.05)
        await xq.stop_feeding()
    assert not xq.is_feeding()
    assert [read(job.stdout_file) for job in xq.jobs] == [f"{i}\n" for i in range(5)]
    assert errors == []
    assert not [w for w in caught if "cancel" in str(w.message).lower() or "never awaited" in str(w.message)]
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert pending == []


async def test_a_job_object_can_be_fed(workdir):
    xq = Xqute(workdir=workdir)
    job = Job(0, ["bash", "-c", 'echo "$A$B"'], xq.scheduler.workdir, envs={"A": "1"})
    await xq.feed(job, envs={"B": "2"})
    await xq.run_until_complete()
    assert read(job.stdout_file) == "12\n"


async def test_work_per_round_is_proportional_to_active_jobs(workdir, monkeypatch):
    sizes = []
    from xqute.schedulers.local_scheduler import LocalScheduler

    original = LocalScheduler.refresh_jobs

    async def spy(self, jobs):
        sizes.append(len(jobs))
        return await original(self, jobs)

    monkeypatch.setattr(LocalScheduler, "refresh_jobs", spy)
    await run_jobs(workdir, [["true"]] * 300, forks=4)
    assert sizes and max(sizes) <= 4


async def test_status_files_are_never_seen_half_written(workdir):
    """A reader polling status and rc files while jobs write them only ever
    sees a whole value (or no file)."""
    stop = threading.Event()
    bad: list[str] = []

    def reader():
        while not stop.is_set():
            for index in range(40):
                for name in ("job.status", "job.rc"):
                    try:
                        text = (Path(workdir) / str(index) / name).read_text()
                    except FileNotFoundError:
                        continue
                    if not text.strip().lstrip("-").isdigit():
                        bad.append(repr(text))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        await run_jobs(workdir, [["true"]] * 40, forks=8)
    finally:
        stop.set()
        thread.join()
    assert bad == []


# ---------------------------------------------------------------- signals and processes
def run_program(code: str, *args, timeout=60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_kills_every_job_and_restores_handlers(workdir, sig):
    marker = f"xq-sig-{sig.name}-{os.getpid()}"
    proc = run_program(
        f"""
        import asyncio, os, signal, sys
        from xqute import Xqute, JobStatus
        async def main():
            before = signal.getsignal(signal.{sig.name})
            xq = Xqute(workdir=sys.argv[1], forks=3)
            for i in range(5):
                await xq.feed(["bash", "-c", "sleep 60 & sleep 61; echo # {marker}"])
            asyncio.get_running_loop().call_later(1.0, os.kill, os.getpid(), signal.{sig.name})
            await xq.run_until_complete()
            print("statuses", [JobStatus.get_name(j.status) for j in xq.jobs])
            print("handler restored", signal.getsignal(signal.{sig.name}) is before)
        asyncio.run(main())
        """,
        str(workdir),
    )
    assert proc.returncode == 0, proc.stderr
    assert "statuses ['FAILED', 'FAILED', 'FAILED', 'QUEUED', 'QUEUED']" in proc.stdout
    assert "handler restored True" in proc.stdout
    assert processes_with(marker) == []


def test_jobs_survive_a_killed_manager_and_a_rerun_follows_them(workdir):
    """SIGKILL to the manager: its jobs finish and record their status; a rerun
    on the same workdir follows the ones still running instead of starting them
    again."""
    program = """
        import asyncio, sys
        from xqute import Xqute
        async def main():
            xq = Xqute(workdir=sys.argv[1], forks=4)
            for i in range(4):
                await xq.feed(["bash", "-c", f"echo start >> \\"$XQUTE_JOB_METADIR/starts\\"; sleep {1 + i}; echo done {i}"])
            await xq.run_until_complete()
            print("rcs", [await j.get_rc() for j in xq.jobs])
        asyncio.run(main())
    """
    first = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(program), str(workdir)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # wait until all four jobs have started, then kill the manager outright
    deadline = 30
    import time

    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if all((Path(workdir) / str(i) / "starts").exists() for i in range(4)):
            break
        time.sleep(0.05)
    first.kill()
    first.wait()
    second = run_program(textwrap.dedent(program), str(workdir))
    assert second.returncode == 0, second.stderr
    assert "rcs [0, 0, 0, 0]" in second.stdout
    for i in range(4):
        # each job ran exactly once, and finished with its output
        assert read(Path(workdir) / str(i) / "starts") == "start\n"
        assert read(Path(workdir) / str(i) / "job.stdout") == f"done {i}\n"


def test_uvloop_by_default_and_opt_out():
    code = """
        import asyncio, xqute
        print(type(asyncio.get_event_loop_policy()).__module__)
    """
    assert run_program(code).stdout.strip().startswith("uvloop")
    assert run_program(code, env={"XQUTE_LOOP": "asyncio"}).stdout.strip().startswith("asyncio")


def test_importing_inside_a_running_loop_leaves_the_loop_policy_alone(tmp_path):
    proc = run_program(
        """
        import asyncio, sys
        async def main():
            import xqute  # late import, inside the running (asyncio) loop
            from xqute.utils import run_command
            result = await run_command("echo", "works")
            print(type(asyncio.get_event_loop_policy()).__module__, result.stdout.strip())
        asyncio.run(main())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["asyncio.unix_events", "works"]


# ---------------------------------------------------------------- the 2.x contract
XQUTE2_PROGRAM = """
import asyncio, sys
from xqute import Xqute, plugin
from xqute.defaults import JobStatus

class MyPlugin:
    name = "my2xplugin"

    @plugin.impl
    async def on_job_succeeded(scheduler, job):
        print("succeeded", job.index, flush=True)

    @plugin.impl
    async def on_job_failed(scheduler, job):
        print("failed", job.index, await job.get_rc(), flush=True)

async def main():
    xqute = Xqute(
        "local",
        forks=3,
        workdir=sys.argv[1],
        error_strategy="retry",
        num_retries=1,
        plugins=[MyPlugin],
        scheduler_opts={"prescript": "export GREETING=hi"},
    )
    for i in range(6):
        await xqute.feed(["bash", "-c", f"echo $GREETING {i}; exit $(( {i} == 5 ))"])
    await xqute.run_until_complete()
    print("statuses", [JobStatus.get_name(job.status) for job in xqute.jobs])

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_a_program_written_for_xqute_2_runs_unchanged(workdir):
    proc = subprocess.run(
        [sys.executable, "-c", XQUTE2_PROGRAM, str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert sorted(line for line in out if line.startswith("succeeded")) == [f"succeeded {i}" for i in range(5)]
    assert out.count("failed 5 1") == 2  # first trial and its one retry
    assert out[-1] == "statuses ['FINISHED', 'FINISHED', 'FINISHED', 'FINISHED', 'FINISHED', 'FAILED']"
    assert read(Path(workdir) / "3" / "job.stdout") == "hi 3\n"


async def test_a_relative_workdir_works_with_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    xq = await run_jobs("rel wd", ["pwd"], scheduler_opts={"cwd": str(elsewhere)})
    job = xq.jobs[0]
    assert await job.get_rc() == 0
    assert read(job.stdout_file) == f"{elsewhere}\n"
    assert str(xq.scheduler.workdir) == str(tmp_path / "rel wd")


# ------------------------------------------------- 2.x client compatibility
async def test_list_arguments_expand_only_names_in_the_jobs_environment(workdir):
    """``$NAME``/``${NAME}`` expand in the job's environment (2.x documents
    ``feed(["process.sh", "$SLURM_ARRAY_TASK_ID"])``); nothing else does."""
    cmd = [
        sys.executable, "-c", "import json,sys; print(json.dumps(sys.argv[1:]))",
        "$GREETING", "${GREETING}/x", "pre$GREETING.post", "$(echo no)", "`echo no`",
        "*", "\\$GREETING", "$GREETING$GREETING", "${GREETING", "$",
    ]
    xq = Xqute(workdir=workdir)
    await xq.feed(cmd, envs={"GREETING": "hi there; $(echo not-run) *"})
    await xq.run_until_complete()
    import json

    value = "hi there; $(echo not-run) *"
    assert json.loads(read(xq.jobs[0].stdout_file)) == [
        value, f"{value}/x", f"pre{value}.post", "$(echo no)", "`echo no`",
        "*", "$GREETING", value + value, "${GREETING", "$",
    ]


async def test_a_string_command_expands_names_too(workdir):
    xq = Xqute(workdir=workdir)
    await xq.feed("printf '%s|' $GREETING '\\$GREETING'", envs={"GREETING": "a b"})
    await xq.run_until_complete()
    assert read(xq.jobs[0].stdout_file) == "a b|$GREETING|"


async def test_an_unset_name_fails_the_job_with_bash_saying_why(workdir):
    xq = await run_jobs(workdir, [["echo", "$XQUTE_SURELY_UNSET_NAME"]])
    assert xq.jobs[0].status == JobStatus.FAILED
    assert "XQUTE_SURELY_UNSET_NAME" in read(xq.jobs[0].stderr_file)


async def test_empty_command_is_allowed_until_the_job_is_submitted(workdir):
    """pipen creates every job with create_job(i, "") and sets cmd later; a job
    still empty at submission fails with a clear message and the run goes on."""
    xq = Xqute(workdir=workdir)
    later = await xq.scheduler.create_job(0, "")
    assert later.cmd == ()
    later.cmd = ["echo", "set later"]
    await xq.feed(later)
    empty = await xq.feed("   ")
    listed = await xq.feed([])
    fine = await xq.feed(["echo", "ok"])
    await xq.run_until_complete()
    assert read(later.stdout_file) == "set later\n"
    for job in (empty, listed):
        assert job.status == JobStatus.FAILED
        assert await job.get_rc() == -2
        assert "empty command" in read(job.stderr_file)
    assert fine.status == JobStatus.FINISHED
    assert Job(index=0, cmd=(), workdir=workdir).cmd == ()


RERUN_PROGRAM = """
import asyncio, sys
from xqute import Xqute
async def main():
    workdir, log = sys.argv[1], sys.argv[2]
    xq = Xqute(workdir=workdir, forks=4)
    script = (
        f'echo "$XQUTE_JOB_INDEX start $EPOCHREALTIME" >> "{log}"; sleep 1.5; '
        f'echo "$XQUTE_JOB_INDEX end $EPOCHREALTIME" >> "{log}"'
    )
    for i in range(12):
        await xq.feed(["bash", "-c", script.replace("$", "\\\\$")])
    await xq.run_until_complete()
    print("rcs", [await j.get_rc() for j in xq.jobs])
asyncio.run(main())
"""


def _peak_concurrency(lines: list[str]) -> int:
    events = []
    for line in lines:
        _, what, when = line.split()
        events.append((float(when), 1 if what == "start" else -1))
    peak = running = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    return peak


def test_a_rerun_adopts_jobs_left_running_behind_finished_ones_at_once(workdir, tmp_path):
    """The manager is killed while jobs 4-7 run (0-3 done, 8-11 queued). A rerun
    at once, with the same 12 commands, follows 4-7 from its start: they count
    against forks and are never started again, though 0-3 (finished, so fed to
    run again) come first in its queue."""
    import time

    log = tmp_path / "log"
    cmd = [sys.executable, "-c", RERUN_PROGRAM, str(workdir), str(log)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = time.monotonic()
    while time.monotonic() - started < 60:
        if log.exists() and read(log).count(" start ") >= 8:
            break
        time.sleep(0.02)
    first.kill()
    first.wait()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "rcs [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" in second.stdout
    lines = read(log).splitlines()
    starts = [line.split()[0] for line in lines if " start " in line]
    # 0-3 ended before the kill and were fed again: twice; every other job once
    assert sorted(starts.count(str(i)) for i in range(4, 12)) == [1] * 8, lines
    assert all(starts.count(str(i)) == 2 for i in range(4)), lines
    assert _peak_concurrency(lines) <= 4, lines


def test_a_rerun_follows_a_wrapper_whose_jid_file_was_never_written(workdir):
    """A manager killed between starting a job's wrapper and writing its jid
    file: the rerun finds the wrapper by its script and follows it."""
    program = textwrap.dedent(
        """
        import asyncio, sys
        from xqute import Xqute
        async def main():
            xq = Xqute(workdir=sys.argv[1], forks=2)
            for i in range(2):
                await xq.feed(["bash", "-c", f"echo start >> \\"$XQUTE_JOB_METADIR/starts\\"; sleep 3"])
            await xq.run_until_complete()
            print("rcs", [await j.get_rc() for j in xq.jobs])
        asyncio.run(main())
        """
    )
    first = subprocess.Popen([sys.executable, "-c", program, str(workdir)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    import time

    start = time.monotonic()
    while not all((Path(workdir) / str(i) / "starts").exists() for i in range(2)):
        assert time.monotonic() - start < 30
        time.sleep(0.05)
    first.kill()
    first.wait()
    (Path(workdir) / "1" / "job.jid").unlink()  # as if killed before writing it
    second = run_program(program, str(workdir))
    assert second.returncode == 0, second.stderr
    assert "rcs [0, 0]" in second.stdout
    for i in range(2):
        assert read(Path(workdir) / str(i) / "starts") == "start\n"


async def test_a_lost_array_reply_whose_lookup_fails_is_looked_up_again_never_resubmitted(workdir):
    """An in-process test backend (no scheduler can be made to do this on
    demand): the array's reply is lost, then the first lookup fails for now.
    The base class must look again, not split the array and submit it anew."""
    from xqute.scheduler import SubmissionError
    from xqute.schedulers.local_scheduler import LocalScheduler

    class LosesReplies(LocalScheduler):
        name = "local"
        submits = 0
        lookups = 0

        async def submit_array(self, jobs, throttle):
            LosesReplies.submits += 1
            self.pids = [await self.submit_job(job) for job in jobs]
            raise SubmissionError("timed out", transient=True, ambiguous=True)

        async def find_submitted_array(self, jobs, ran):
            LosesReplies.lookups += 1
            if LosesReplies.lookups == 1:
                raise SubmissionError("lookup timed out", transient=True)
            return self.pids

    xq = Xqute(LosesReplies, workdir=workdir, forks=3)
    for _ in range(3):
        await xq.feed(["true"])
    await xq.run_until_complete()
    assert [await job.get_rc() for job in xq.jobs] == [0, 0, 0]
    assert LosesReplies.submits == 1 and LosesReplies.lookups == 2


async def test_a_job_that_ends_while_a_rerun_asks_about_it_keeps_its_result_and_is_not_run_again(workdir):
    """A rerun reads a job's files (RUNNING, with a jid), then asks the
    scheduler, which says the job is gone: it ended in between. Its recorded
    end is its result; it is not started a second time."""
    from xqute.schedulers.local_scheduler import LocalScheduler

    metadir = Path(workdir) / "0"
    metadir.mkdir(parents=True)
    (metadir / "job.status").write_text(f"{JobStatus.RUNNING}\n")
    (metadir / "job.jid").write_text("999999999\n")  # no such process
    marker = Path(workdir) / "ran again"

    class EndsWhileAsked(LocalScheduler):
        async def query_jobs(self, jobs):
            # the earlier run's wrapper records its end just now
            (metadir / "job.rc").write_text("0\n")
            (metadir / "job.status").write_text(f"{JobStatus.FINISHED}\n")
            return await super().query_jobs(jobs)

    xq = Xqute(EndsWhileAsked, workdir=workdir, forks=1)
    job = await xq.feed(["touch", str(marker)])
    await asyncio.wait_for(xq.run_until_complete(), 30)
    assert not marker.exists(), "the job was started a second time"
    assert await job.get_rc() == 0 and job.status == JobStatus.FINISHED
