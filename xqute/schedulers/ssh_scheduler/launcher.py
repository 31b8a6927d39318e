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

# Exit code of the launch script when the wrapper's shell is missing on the host.
LAUNCH_NO_SHELL = 4
# Prefixes of the launch script's answer lines (login shells may print others).
PID_MARK = "xqute-pid:"
ERROR_MARK = "xqute-err:"


def launch_script(scripts: Sequence[str], wrapper_lang: str, cwd: str | None) -> str:
    """Start each job's wrapper detached (own session, stdio on /dev/null) and
    return at once, without waiting for the jobs.

    Prints ``xqute-pid:<k>:<pid>`` for the k-th script started, or
    ``xqute-err:<k>:<why>`` for one that could not be. ``setsid`` in a
    non-interactive shell's background job does not fork (the job is not a group
    leader), so ``$!`` is the wrapper's pid, which is also its session id and
    process group id.
    """
    q = shlex.quote
    go_to = f"cd {q(cwd)} 2>/dev/null || cd" if cwd else "cd"
    launches = "\n".join(f"_xq_launch {k} {q(path)}" for k, path in enumerate(scripts))
    return f"""{go_to}
_xq_lang={q(wrapper_lang)}
if [ ! -x "$_xq_lang" ]; then
    echo "$_xq_lang is not installed on $(hostname)" >&2
    exit {LAUNCH_NO_SHELL}
fi
if command -v setsid >/dev/null 2>&1; then _xq_setsid=setsid
else _xq_setsid=; set -m  # no setsid: at least a process group of its own
fi
_xq_launch() {{
    if [ ! -r "$2" ]; then
        echo "{ERROR_MARK}$1:cannot read the job script $2 on $(hostname): the workdir must be on a file system this host shares (see mounted_workdir)"
        return 0
    fi
    $_xq_setsid "$_xq_lang" "$2" </dev/null >/dev/null 2>&1 &
    echo "{PID_MARK}$1:$!"
}}
{launches}
"""


def parse_number(text: str) -> int | None:
    """A pid or launch index printed by a remote shell: 1-10 ASCII digits, else
    None (callers refuse 0 as a pid). Not ``str.isdigit`` alone, which takes
    digits (``²``) int() refuses, nor int() alone, which takes signs, spaces and
    other scripts' digits."""
    if 0 < len(text) <= 10 and text.isascii() and text.isdigit():
        return int(text)
    return None


def parse_launch_output(stdout: str) -> tuple[dict[int, int], dict[int, str]]:
    """``({k: pid}, {k: why not started})`` from the launch script's answer."""
    pids: dict[int, int] = {}
    errors: dict[int, str] = {}
    for line in stdout.splitlines():
        line = line.strip()
        for mark, into in ((PID_MARK, pids), (ERROR_MARK, errors)):
            if line.startswith(mark):
                key_text, _, value = line[len(mark):].partition(":")
                key = parse_number(key_text)
                if key is None:
                    continue
                if into is pids:
                    pid = parse_number(value)
                    if pid:
                        pids[key] = pid
                else:
                    errors[key] = value
    return pids, errors


def alive_command(pids: Iterable[int]) -> str:
    """One ``ps`` for all the pids: prints ``pid args`` of those still alive
    (exit 1 with no output when none is). Only digits and commas go to the login
    shell, which every shell reads the same way."""
    return "ps -o pid= -o args= -p " + ",".join(str(int(pid)) for pid in pids)


def parse_alive_output(stdout: str) -> dict[int, str]:
    """``{pid: command line}`` from :func:`alive_command`'s output."""
    alive = {}
    for line in stdout.splitlines():
        pid_text, _, args = line.strip().partition(" ")
        pid = parse_number(pid_text)
        if pid:
            alive[pid] = args.strip()
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
