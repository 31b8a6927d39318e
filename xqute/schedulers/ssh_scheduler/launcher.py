"""The POSIX shell code run on the remote hosts.

Nothing but ``/bin/sh`` and the usual tools (``setsid``, ``ps``, ``kill``) is
needed there: no Python. Scripts go to ``/bin/sh -s`` on the remote side through
ssh's standard input, so the user's login shell (bash, zsh, fish, ...) only ever
parses the fixed words ``/bin/sh -s``, and every value inside a script is quoted
for ``/bin/sh`` with :func:`shlex.quote`.
"""

from __future__ import annotations

import shlex
from typing import Iterable, Sequence

# What the login shell is asked to run; the script comes on stdin.
REMOTE_SHELL = "/bin/sh -s"

# Exit codes of the launch script, besides 0 (started, pid printed).
LAUNCH_NO_SCRIPT = 3
LAUNCH_NO_SHELL = 4
# Prefix of the launch script's answer line (login shells may print other lines).
PID_MARK = "xqute-pid:"


def launch_script(script_path: str, wrapper_lang: str, cwd: str | None) -> str:
    """Start the job's wrapper detached (own session, stdio on /dev/null), print
    its pid and return at once, without waiting for the job.

    ``setsid`` in a non-interactive shell's background job does not fork (the job
    is not a group leader), so ``$!`` is the wrapper's pid, which is also its
    session id and process group id.
    """
    q = shlex.quote
    go_to = f"cd {q(cwd)} 2>/dev/null || cd" if cwd else "cd"
    return f"""{go_to}
_xq_script={q(script_path)}
_xq_lang={q(wrapper_lang)}
if [ ! -r "$_xq_script" ]; then
    echo "cannot read the job script $_xq_script on $(hostname): the workdir must be on a file system this host shares (see mounted_workdir)" >&2
    exit {LAUNCH_NO_SCRIPT}
fi
if [ ! -x "$_xq_lang" ]; then
    echo "$_xq_lang is not installed on $(hostname)" >&2
    exit {LAUNCH_NO_SHELL}
fi
if command -v setsid >/dev/null 2>&1; then
    setsid "$_xq_lang" "$_xq_script" </dev/null >/dev/null 2>&1 &
else
    # no setsid: at least a process group of its own, for kill
    set -m
    "$_xq_lang" "$_xq_script" </dev/null >/dev/null 2>&1 &
fi
echo "{PID_MARK}$!"
"""


def parse_launch_output(stdout: str) -> int | None:
    """The pid from the launch script's answer, or None."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith(PID_MARK):
            value = line[len(PID_MARK):]
            return int(value) if value.isdigit() else None
    return None


def alive_command(pids: Iterable[int]) -> str:
    """One ``ps`` for all the pids: prints ``pid args`` of those still alive
    (exit 1 with no output when none is). Only digits and commas go to the login
    shell, which every shell reads the same way."""
    return "ps -o pid= -o args= -p " + ",".join(str(int(pid)) for pid in pids)


def parse_alive_output(stdout: str) -> dict[int, str]:
    """``{pid: command line}`` from :func:`alive_command`'s output."""
    alive = {}
    for line in stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if pid.isdigit():
            alive[int(pid)] = args.strip()
    return alive


def kill_script(targets: Sequence[tuple[int, str]], grace: float) -> str:
    """SIGTERM each job's process group (its wrapper passes the signal on to the
    command's group and records how the job ended), wait up to ``grace`` seconds
    for the wrappers to exit, then SIGKILL whatever is left in their sessions.

    ``targets``: (pid, wrapper script path) pairs; a pid whose command line no
    longer names its script (a reused pid) is left alone.
    """
    q = shlex.quote
    lines = [f"_xq_term {int(pid)} {q(script)}" for pid, script in targets]
    ticks = max(1, int(grace * 5))
    return f"""_xq_pids=
_xq_term() {{
    _xq_args=$(ps -o args= -p "$1" 2>/dev/null) || return 0
    case $_xq_args in *"$2"*) ;; *) return 0 ;; esac
    kill -TERM "-$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null
    _xq_pids="$_xq_pids $1"
}}
{chr(10).join(lines)}
_xq_left=$_xq_pids
_xq_tick=0
while [ -n "$_xq_left" ] && [ "$_xq_tick" -lt {ticks} ]; do
    sleep 0.2 2>/dev/null || sleep 1
    _xq_tick=$((_xq_tick + 1))
    _xq_still=
    for _xq_p in $_xq_left; do
        kill -0 "$_xq_p" 2>/dev/null && _xq_still="$_xq_still $_xq_p"
    done
    _xq_left=$_xq_still
done
# what ignored SIGTERM (and its children) goes now: the wrapper's group, and
# everything else in the wrapper's session (the command's own group)
for _xq_p in $_xq_pids; do
    kill -KILL "-$_xq_p" 2>/dev/null
    if command -v pkill >/dev/null 2>&1; then pkill -KILL -s "$_xq_p" 2>/dev/null; fi
done
exit 0
"""
