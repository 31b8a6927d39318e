"""Counting a scheduler's CLI calls: one shim per command, first on PATH, that
logs its name and execs the real binary."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path


def write_counting_shims(folder: Path, commands: list[str] | tuple[str, ...], log: Path, start_hint: str) -> None:
    """A shim in ``folder`` for each of ``commands``; exits naming
    ``start_hint`` when one is not on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    for command in commands:
        real = shutil.which(command)
        if real is None:
            sys.exit(f"{command} is not on PATH: {start_hint}")
        shim = folder / command
        # one short O_APPEND write per call, so concurrent calls keep whole lines
        shim.write_text(
            "#!/bin/sh\n"
            f"echo {command} >> {shlex.quote(str(log))}\n"
            f"exec {shlex.quote(real)} \"$@\"\n"
        )
        shim.chmod(0o755)
