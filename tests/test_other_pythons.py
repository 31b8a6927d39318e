"""The package on the other Pythons it supports (pyproject says >=3.10; the
test environment has one): 3.12 moved pathlib's set-up of a path from ``__new__`` to
``__init__``, which broke every SpecPath there once. Runs where such an
interpreter is installed (on PATH, or under pyenv), with this environment's
pure-Python dependencies; skips elsewhere (CI's Debian has only its own)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from xqute import Xqute
    from xqute.path import SpecPath, MountedPath

    p = SpecPath("/data/wd", mounted="/mnt/wd")
    child = p / "0" / "job.rc"
    assert str(child) == "/data/wd/0/job.rc", str(child)
    assert str(child.mounted) == "/mnt/wd/0/job.rc", str(child.mounted)
    assert str(child.parent.mounted) == "/mnt/wd/0"
    plain = SpecPath("/data/x")
    assert str(plain / "y") == "/data/x/y" and str(plain.mounted) == "/data/x"
    assert str(MountedPath("/mnt/a", "/data/a").spec / "b") == "/data/a/b"
    assert str(SpecPath("gs://bucket/key") / "x") == "gs://bucket/key/x"

    async def run(workdir):
        xq = Xqute(workdir=workdir, forks=2)
        for i in range(3):
            await xq.feed(["bash", "-c", f"echo job{i}; exit {i % 2}"])
        await xq.run_until_complete()
        return [(await job.get_rc(), open(job.stdout_file).read()) for job in xq.jobs]

    got = asyncio.run(run(sys.argv[1]))
    assert got == [(0, "job0\\n"), (1, "job1\\n"), (0, "job2\\n")], got
    print("ok", sys.version_info[:2])
    """
)


def _interpreter(version: str) -> str | None:
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin", f"python{version}")))
    for exe in candidates:
        if exe and subprocess.run([exe, "-c", ""], capture_output=True).returncode == 0:
            return exe
    return None


@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_paths_and_a_run_work_on_another_python(version, tmp_path):
    exe = _interpreter(version)
    if exe is None:
        pytest.skip(f"no python{version} installed here (on PATH or under pyenv)")
    site_packages = [path for path in sys.path if path.endswith("site-packages")]
    env = dict(os.environ)
    # this environment's pure-Python dependencies; uvloop (compiled for this
    # Python) is left out by asking for asyncio's own loop
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *site_packages])
    env["XQUTE_LOOP"] = "asyncio"
    proc = subprocess.run(
        [exe, "-c", SCRIPT, str(tmp_path / "wd")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok"), proc.stdout
