"""A real pipen pipeline on every scheduler (run by scripts/downstream.sh with
.venv-downstream's python, where pipen 1.2.4 is installed over this checkout).

In the project's own venv pipen is not installed: nothing here is collected
there.  Wall times of the pipeline runs are gathered through the ``wall_times``
fixture and printed in the terminal summary.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if importlib.util.find_spec("pipen") is None:
    # the project's own test run (.venv has no pipen): skip this folder quietly
    collect_ignore_glob = ["*"]

_WALL_TIMES: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="session")
def wall_times() -> dict[str, dict[str, float]]:
    """{scheduler: {"first run": s, "cached rerun": s}}, printed at the end."""
    return _WALL_TIMES


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _WALL_TIMES:
        return
    terminalreporter.section("pipen pipeline wall time per scheduler")
    width = max(len(scheduler) for scheduler in _WALL_TIMES)
    for scheduler, times in _WALL_TIMES.items():
        parts = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in times.items())
        terminalreporter.write_line(f"{scheduler:>{width}}: {parts}")
