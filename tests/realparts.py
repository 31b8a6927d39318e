"""Gate for tests that need a real part (Slurm, Grid Engine, sshd, podman, stores).

Each part is brought up by ``scripts/<part>.sh start``; ``scripts/<part>.sh status``
exits 0 when it is up.  A test that needs a part calls :func:`require` (or uses the
``needs(part)`` marker helper): on a machine where the part is down it is skipped
with the reason, and under ``CI=true`` it fails instead, since CI must run it.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@functools.lru_cache(maxsize=None)
def part_status(part: str) -> tuple[bool, str]:
    """(is up, why not) for a part, asking its script once per test session."""
    script = SCRIPTS / f"{part}.sh"
    if not script.exists():
        return False, f"no script {script}"
    try:
        proc = subprocess.run(
            ["bash", str(script), "status"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False, f"{script.name} status timed out"
    if proc.returncode == 0:
        return True, ""
    why = (proc.stdout + proc.stderr).strip().splitlines()
    return False, why[-1] if why else f"{script.name} status exited {proc.returncode}"


@functools.lru_cache(maxsize=None)
def part_env(part: str) -> dict[str, str]:
    """Environment variables the part's script says clients need (``env`` verb)."""
    script = SCRIPTS / f"{part}.sh"
    proc = subprocess.run(
        ["bash", str(script), "env"], capture_output=True, text=True, timeout=60
    )
    env = {}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):]
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value.strip("'\"")
    return env


def require(part: str) -> None:
    """Skip (or, in CI, fail) the calling test unless ``part`` is up."""
    up, why = part_status(part)
    if up:
        return
    msg = f"real {part} is not available here: {why} (start it: bash scripts/{part}.sh start)"
    if IN_CI:
        pytest.fail(msg + "; CI=true, so this must run")
    pytest.skip(msg)
