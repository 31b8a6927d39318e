"""`get_scheduler` takes a `module:Class` reference as well as a built-in name,
so `Xqute("mypkg.mod:MyScheduler")` and `xqute run -s mypkg.mod:MyScheduler`
work; a bad reference is a ValueError that says what is wrong."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xqute import Xqute
from xqute.schedulers import get_scheduler
from xqute.schedulers.local_scheduler import LocalScheduler

ROOT = Path(__file__).resolve().parent.parent

MODULE = '''
from xqute.schedulers.local_scheduler import LocalScheduler


class MyScheduler(LocalScheduler):
    name = "mine"


class Outer:
    class Inner(LocalScheduler):
        name = "inner"


NotAScheduler = dict
'''


@pytest.fixture
def mypkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package ``xq_test_pkg`` with a scheduler subclass in ``xq_test_pkg.scheds``."""
    pkg = tmp_path / "pkgs" / "xq_test_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "scheds.py").write_text(MODULE)
    (pkg / "broken.py").write_text("import xq_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(pkg.parent))
    yield pkg.parent
    for name in [m for m in sys.modules if m.startswith("xq_test_pkg")]:
        del sys.modules[name]


def test_module_class_reference(mypkg: Path):
    cls = get_scheduler("xq_test_pkg.scheds:MyScheduler")
    assert issubclass(cls, LocalScheduler) and cls.__name__ == "MyScheduler"
    assert get_scheduler("xq_test_pkg.scheds:Outer.Inner").name == "inner"
    # built-in names and classes work as before
    assert get_scheduler("local") is LocalScheduler
    assert get_scheduler(cls) is cls


@pytest.mark.parametrize(
    "reference, message",
    [
        ("xq_test_pkg.nosuch:MyScheduler", "there is no module xq_test_pkg.nosuch"),
        ("xq_no_such_pkg.mod:MyScheduler", "there is no module xq_no_such_pkg.mod"),
        ("xq_test_pkg.scheds:NoSuch", "xq_test_pkg.scheds has no NoSuch"),
        ("xq_test_pkg.scheds:NotAScheduler", "not a subclass of xqute.Scheduler"),
        ("xq_test_pkg.scheds:", "module:Class"),
        (":MyScheduler", "module:Class"),
        ("xq_test_pkg/scheds:MyScheduler", "module:Class"),
        ("xq_test_pkg.scheds:My-Scheduler", "module:Class"),
    ],
)
def test_bad_reference(mypkg: Path, reference: str, message: str):
    with pytest.raises(ValueError, match="Unknown scheduler|not a subclass") as info:
        get_scheduler(reference)
    assert message in str(info.value)
    assert repr(reference) in str(info.value)


def test_a_module_that_fails_to_import_says_why(mypkg: Path):
    """The reference is right but its module needs something missing: that error
    is not hidden behind "unknown scheduler"."""
    with pytest.raises(ModuleNotFoundError, match="xq_no_such_dependency"):
        get_scheduler("xq_test_pkg.broken:MyScheduler")


def test_xqute_runs_with_a_module_class_scheduler(mypkg: Path, tmp_path: Path):
    async def main() -> Xqute:
        xq = Xqute("xq_test_pkg.scheds:MyScheduler", workdir=tmp_path / "wd", forks=2)
        for i in range(2):
            await xq.feed(["echo", str(i)])
        await xq.run_until_complete()
        return xq

    xq = asyncio.run(main())
    assert type(xq.scheduler).__name__ == "MyScheduler"
    assert (tmp_path / "wd" / "1" / "job.stdout").read_text() == "1\n"


def test_cli_run_and_kill_with_a_module_class_scheduler(mypkg: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(mypkg)])}
    env.pop("XQUTE_LOG_LEVEL", None)

    def xqute(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xqute", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env=env)

    (tmp_path / "jobs.txt").write_text("echo one\n")
    proc = xqute("run", "jobs.txt", "-s", "xq_test_pkg.scheds:MyScheduler", "-w", "wd")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "wd" / "xqute.run.json").read_text())
    assert record["scheduler"] == "xq_test_pkg.scheds:MyScheduler"

    proc = xqute("run", "jobs.txt", "-s", "xq_test_pkg.scheds:NoSuch", "-w", "wd2")
    assert proc.returncode == 2
    assert "xqute: error: Unknown scheduler 'xq_test_pkg.scheds:NoSuch'" in proc.stderr

    proc = xqute("kill", "wd", "-s", "xq_test_pkg.nosuch:X")  # nothing going: no scheduler needed
    assert proc.returncode == 0 and "Nothing is running" in proc.stderr

    # a job left "running" whose process is long gone
    from xqute.defaults import JobStatus

    meta = tmp_path / "wd3" / "0"
    meta.mkdir(parents=True)
    (meta / "job.status").write_text(f"{JobStatus.RUNNING}\n")
    (meta / "job.jid").write_text("4194303\n")
    proc = xqute("kill", "wd3", "-s", "xq_test_pkg.scheds:NoSuch")
    assert proc.returncode == 2
    assert "cannot load the scheduler xq_test_pkg.scheds:NoSuch the run used" in proc.stderr
    proc = xqute("kill", "wd3", "-s", "xq_test_pkg.scheds:MyScheduler")
    assert proc.returncode == 0, proc.stderr
    assert "Not running according to xq_test_pkg.scheds:MyScheduler: jobs 0" in proc.stderr
