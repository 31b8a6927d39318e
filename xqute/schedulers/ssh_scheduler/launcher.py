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
CGROUP_MARK = "xqute-cg:"
NO_CGROUP_MARK = "xqute-nocg:"

# Finds (once per launch call) where this host's user may make memory cgroups,
# and makes one per job that wants it. POSIX sh; ``@PARENT@`` (this manager's
# folder of cgroups) and ``@DIR@`` (the user's ``cgroup_dir``, or '') are
# filled in, quoted. Sets _xq_cgv (1 or 2) and _xq_cgtop (the folder) once a
# place is found; _xq_cgwhy says why none was.
_CGROUP_CODE = r"""_xq_cgv= _xq_cgtop= _xq_cgwhy= _xq_cgtried=
_xq_cg_try() { # a place -> 0 when @PARENT@ could be made (or was there) under it
    [ -d "$1" ] || return 1
    if [ -e "$1/cgroup.controllers" ]; then _xq_v=2
    elif [ -e "$1/memory.limit_in_bytes" ]; then _xq_v=1
    else _xq_cgwhy="$_xq_cgwhy; $1: no memory controller"; return 1
    fi
    _xq_top=$1/@PARENT@
    if [ ! -d "$_xq_top" ] && ! mkdir "$_xq_top" 2>/dev/null; then
        _xq_cgwhy="$_xq_cgwhy; $1: may not make cgroups there"; return 1
    fi
    if [ "$_xq_v" = 2 ]; then
        _xq_c=
        read -r _xq_c <"$_xq_top/cgroup.controllers" 2>/dev/null
        case " $_xq_c " in *" memory "*) ;; *)
            # fails when the place holds processes itself (v2's rule)
            { echo +memory >"$1/cgroup.subtree_control"; } 2>/dev/null
            _xq_c=
            read -r _xq_c <"$_xq_top/cgroup.controllers" 2>/dev/null ;;
        esac
        case " $_xq_c " in *" memory "*) ;; *)
            rmdir "$_xq_top" 2>/dev/null
            _xq_cgwhy="$_xq_cgwhy; $1: the memory controller is not delegated below it"; return 1 ;;
        esac
        if ! { echo +memory >"$_xq_top/cgroup.subtree_control"; } 2>/dev/null; then
            _xq_c=
            read -r _xq_c <"$_xq_top/cgroup.subtree_control" 2>/dev/null
            case " $_xq_c " in *" memory "*) ;; *)
                rmdir "$_xq_top" 2>/dev/null
                _xq_cgwhy="$_xq_cgwhy; $1: cannot enable the memory controller below it"; return 1 ;;
            esac
        fi
    fi
    _xq_cgv=$_xq_v _xq_cgtop=$_xq_top
}
_xq_cg_find() {
    _xq_cgtried=1
    if [ -n @DIR@ ]; then
        _xq_cg_try @DIR@ && return 0
        _xq_cgwhy="cgroup_dir${_xq_cgwhy#;}"; return 1
    fi
    # this shell's memory cgroup: v1's when the memory controller is bound there
    _xq_p1= _xq_p2= _xq_m1= _xq_m2= _xq_r1= _xq_r2=
    if [ -r /proc/self/cgroup ]; then
        while IFS=: read -r _xq_a _xq_b _xq_c; do
            case ",$_xq_b," in *,memory,*) _xq_p1=$_xq_c ;; esac
            [ "$_xq_a" = 0 ] && [ -z "$_xq_b" ] && _xq_p2=$_xq_c
        done </proc/self/cgroup
    fi
    if [ -r /proc/self/mountinfo ]; then
        while read -r _xq_a _xq_b _xq_c _xq_root _xq_point _xq_rest; do
            case $_xq_rest in *" - cgroup2 "*)
                [ -z "$_xq_m2" ] && _xq_m2=$_xq_point _xq_r2=$_xq_root ;;
            *" - cgroup "*)
                case ",${_xq_rest##* }," in *,memory,*)
                    [ -z "$_xq_m1" ] && _xq_m1=$_xq_point _xq_r1=$_xq_root ;;
                esac ;;
            esac
        done </proc/self/mountinfo
    fi
    if [ -n "$_xq_p1" ] && [ -n "$_xq_m1" ]; then _xq_p=$_xq_p1 _xq_m=$_xq_m1 _xq_r=$_xq_r1
    elif [ -n "$_xq_p2" ] && [ -n "$_xq_m2" ]; then _xq_p=$_xq_p2 _xq_m=$_xq_m2 _xq_r=$_xq_r2
    else _xq_cgwhy="no memory cgroup hierarchy is mounted"; return 1
    fi
    # a mount of part of the hierarchy (a cgroup namespace): paths below its root
    case $_xq_r in /) ;; *) case $_xq_p in "$_xq_r"|"$_xq_r"/*) _xq_p=${_xq_p#"$_xq_r"} ;; esac ;; esac
    _xq_own=${_xq_m%/}${_xq_p%/}
    for _xq_place in "$_xq_own" "${_xq_own%/*}" "$_xq_m"; do
        case $_xq_place/ in "${_xq_m%/}"/*) ;; *) continue ;; esac
        _xq_cg_try "$_xq_place" && return 0
    done
    _xq_cgwhy="no memory cgroup this user may make children in (${_xq_cgwhy#; })"
    return 1
}
_xq_cg_for() { # k, name, limit in bytes (0: none) -> _xq_cgpath, _xq_peakf
    if [ -z "$_xq_cgtried" ]; then
        _xq_cg_find || echo "@NOCG@$_xq_cgwhy"
    fi
    [ -n "$_xq_cgtop" ] || return 0
    _xq_path=$_xq_cgtop/$2
    mkdir "$_xq_path" 2>/dev/null || [ -d "$_xq_path" ] || return 0
    if [ "$3" != 0 ]; then
        if [ "$_xq_cgv" = 1 ]; then
            { echo "$3" >"$_xq_path/memory.limit_in_bytes"; } 2>/dev/null || { rmdir "$_xq_path"; return 0; }
            # memory plus swap, where the kernel accounts it: no swapping past the limit
            { echo "$3" >"$_xq_path/memory.memsw.limit_in_bytes"; } 2>/dev/null
        else
            { echo "$3" >"$_xq_path/memory.max"; } 2>/dev/null || { rmdir "$_xq_path"; return 0; }
            { echo 0 >"$_xq_path/memory.swap.max"; } 2>/dev/null
        fi
    fi
    if [ "$_xq_cgv" = 1 ]; then _xq_peakf=$_xq_path/memory.max_usage_in_bytes
    elif [ -e "$_xq_path/memory.peak" ]; then _xq_peakf=$_xq_path/memory.peak
    fi
    _xq_cgpath=$_xq_path
    echo "@CG@$1:$_xq_path"
}
""".replace("@NOCG@", NO_CGROUP_MARK).replace("@CG@", CGROUP_MARK)


def launch_script(
    scripts: Sequence[str],
    wrapper_lang: str,
    cwd: str | None,
    cgroups: Sequence[tuple[str, int] | None] | None = None,
    cgroup_parent: str = "",
    cgroup_dir: str | None = None,
    remove: Sequence[str] = (),
) -> str:
    """Start each job's wrapper detached (own session, stdio on /dev/null) and
    return at once, without waiting for the jobs.

    Prints ``xqute-pid:<k>:<pid>`` for the k-th script started, or
    ``xqute-err:<k>:<why>`` for one that could not be. ``setsid`` in a
    non-interactive shell's background job does not fork (the job is not a group
    leader), so ``$!`` is the wrapper's pid, which is also its session id and
    process group id.

    Memory cgroups: ``cgroups[k]`` is ``(name, limit in bytes, 0 for none)``
    for a script that wants one (None: not). The script then looks, on this
    host, for a place where the remote user may make memory cgroups
    (``cgroup_dir`` if given, else its own memory cgroup, that cgroup's
    parent, the hierarchy's root), makes ``<place>/<cgroup_parent>/<name>``
    with its limit, and hands its path (and its peak file) to the wrapper in
    the environment (``_xq_cg``, ``_xq_cgpeak``), which joins it with a
    builtin as its first line. It prints ``xqute-cg:<k>:<path>`` for each one
    made, or once ``xqute-nocg:<why>`` when none could be. ``remove``: cgroups
    of trials that have ended, removed first (``rmdir``; one still holding
    processes stays).
    """
    q = shlex.quote
    go_to = f"cd {q(cwd)} 2>/dev/null || cd" if cwd else "cd"
    wanted = cgroups is not None and any(cgroups)
    lines = []
    for k, path in enumerate(scripts):
        request = cgroups[k] if cgroups is not None and k < len(cgroups) else None
        if request:
            name, limit = request
            lines.append(f"_xq_launch {k} {q(path)} {q(name)} {int(limit)}")
        else:
            lines.append(f"_xq_launch {k} {q(path)}")
    launches = "\n".join(lines)
    memory = ""
    if remove:
        memory += "rmdir " + " ".join(q(path) for path in remove) + " 2>/dev/null\n"
    if wanted:
        memory += _CGROUP_CODE.replace("@PARENT@", q(cgroup_parent)).replace(
            "@DIR@", q(cgroup_dir or "")
        )
    else:
        memory += "_xq_cg_for() { _xq_cgpath= _xq_peakf=; }\n"
    return f"""{go_to}
{memory}_xq_lang={q(wrapper_lang)}
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
    _xq_cgpath= _xq_peakf=
    [ -n "${{3:-}}" ] && _xq_cg_for "$1" "$3" "$4"
    _xq_cg=$_xq_cgpath _xq_cgpeak=$_xq_peakf $_xq_setsid "$_xq_lang" "$2" </dev/null >/dev/null 2>&1 &
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


def parse_cgroup_output(stdout: str) -> tuple[dict[int, str], str | None]:
    """``({k: cgroup path}, why no cgroup could be made or None)`` from the
    launch script's answer."""
    made: dict[int, str] = {}
    why = None
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith(CGROUP_MARK):
            key_text, _, path = line[len(CGROUP_MARK):].partition(":")
            key = parse_number(key_text)
            if key is not None and path.startswith("/"):
                made[key] = path
        elif line.startswith(NO_CGROUP_MARK):
            why = line[len(NO_CGROUP_MARK):].strip() or "no reason given"
    return made, why


def cgroup_cleanup_script(paths: Sequence[str], parents: Sequence[str]) -> str:
    """Remove ended trials' cgroups, then this manager's (now empty) folders of
    them; a cgroup still holding processes stays. Always exits 0."""
    q = shlex.quote
    words = " ".join(q(path) for path in [*paths, *parents])
    return f"rmdir {words} 2>/dev/null\nexit 0\n" if words else "exit 0\n"


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
# and is gone (reaped) before this says it is done: a moment at most
_xq_left=$_xq_pids
_xq_tick=0
while [ -n "$_xq_left" ] && [ "$_xq_tick" -lt 10 ]; do
    _xq_still=
    for _xq_p in $_xq_left; do
        kill -0 "$_xq_p" 2>/dev/null && _xq_still="$_xq_still $_xq_p"
    done
    _xq_left=$_xq_still
    [ -n "$_xq_left" ] || break
    sleep 0.2 2>/dev/null || sleep 1
    _xq_tick=$((_xq_tick + 1))
done
exit 0
"""
