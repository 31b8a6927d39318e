"""Small tools shared by the manager and the schedulers: the logger, quoting,
running a command line with a timeout, mount specifications, slicing long id
lists and putting a command's error output on one line."""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import re
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Mapping, Sequence, Tuple, TypeVar, Union

from panpath import PanPath

CommandType = Union[str, Tuple[str, ...], List[str]]

LOGGER_NAME = "XQUTE"


def _make_logger() -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(os.environ.get("XQUTE_LOG_LEVEL", "INFO").upper())
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
        log.addHandler(handler)
        # our handler prints; the root logger must not print the same line again
        log.propagate = False
    return log


logger = _make_logger()


def log_to_file(path: str | os.PathLike, level: int | str = logging.DEBUG) -> logging.Handler:
    """Also write xqute's log to ``path``; returns the handler (remove it to stop)."""
    handler = logging.FileHandler(path)
    handler.setLevel(level)
    handler.setFormatter(
        logging.Formatter("[%(asctime)s] %(levelname)-7s %(name)s: %(message)s")
    )
    if logger.level > handler.level:
        # lowering the logger's level for the file must not make the other
        # handlers (the console) print more than they did
        for other in logger.handlers:
            if other.level == logging.NOTSET:
                other.setLevel(logger.level)
        logger.setLevel(handler.level)
    logger.addHandler(handler)
    return handler


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def check_env_name(name: str) -> str:
    """Refuse an environment variable name the shell cannot export."""
    # fullmatch: "$" would let a trailing newline through
    if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
        raise ValueError(
            f"Invalid environment variable name {name!r}: it must match [A-Za-z_][A-Za-z0-9_]*"
        )
    return name


def check_no_nul(text: str, what: str) -> str:
    """NUL cannot travel through argv or environment; say so rather than truncating."""
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character, which no process can receive: {text!r}")
    return text


def normalize_cmd(cmd: CommandType) -> tuple[str, ...]:
    """A command as a tuple of arguments; a string is split as a shell would.

    An empty command is allowed here (2.x clients create jobs with ``""`` and
    set the command later); it is refused when the job is submitted.
    Raises ValueError for a command with NUL in it.
    """
    if isinstance(cmd, str):
        args = tuple(shlex.split(cmd))
    elif isinstance(cmd, (list, tuple)):
        args = tuple(str(arg) for arg in cmd)
    else:
        raise TypeError(f"A command must be a string or a list of strings, not {type(cmd).__name__}")
    for arg in args:
        check_no_nul(arg, "Command")
    return args


def empty_command_reason(cmd: Sequence[str]) -> str | None:
    """Why ``cmd`` cannot run as a job (None when it can)."""
    if not cmd or not cmd[0].strip():
        return f"the job has an empty command ({tuple(cmd)!r}); set job.cmd before it is fed"
    return None


@dataclass(frozen=True)
class CommandResult:
    """What a command line printed and how it ended (rc < 0: it did not run or
    was stopped; the reason is in ``stderr``)."""

    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


async def run_command(
    *args: str,
    timeout: float | None = 60.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> CommandResult:
    """Run ``args`` (no shell) and collect its output, never raising.

    A missing binary gives rc 127, a timeout kills the process and gives rc -1;
    either way ``stderr`` says what happened, naming the binary.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        return CommandResult(127, "", f"command not found: {args[0]}")
    except OSError as exc:  # not permitted, a folder, a symlink loop, a name too long
        return CommandResult(126, "", f"cannot execute {args[0]}: {exc}")
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(None if input is None else input.encode()), timeout
        )
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return CommandResult(-1, "", f"{args[0]} timed out after {timeout} s")
    return CommandResult(
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )


_NAMED_MOUNT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _mount_host_key(host: object) -> str:
    """A host path as mounts compare it: a URL as panpath writes it, a local
    path absolute and normalised."""
    text = str(host)
    if "://" in text:
        return text.rstrip("/")
    return os.path.abspath(os.path.expanduser(text))


def _relative_under(path: str, base: str) -> str | None:
    """``path`` relative to ``base`` ("" when the same), None when not under it."""
    if path == base:
        return ""
    prefix = base if base.endswith("/") else base + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _parse_mount_spec(mount: str) -> tuple[PanPath, Path]:
    """``host:inside`` as (host path, path inside); the host may be a URL."""
    host, sep, inside = mount.rpartition(":")
    # a URL alone (gs://b/d) splits as 'gs' + '//b/d': no path inside given
    if not sep or not host or not inside or inside.startswith("//") or host.endswith(":"):
        raise ValueError(
            f"Invalid mount {mount!r}: expected 'host_path:path_inside' or 'NAME=host_path'"
        )
    return PanPath(host), Path(inside)


def split_named_mount(mount: str) -> tuple[str, str] | None:
    """``(NAME, host)`` for a ``NAME=host`` mount, None for any other mount.

    Raises ValueError for ``NAME=`` with no host path.
    """
    if not _NAMED_MOUNT_RE.match(mount):
        return None
    name, host = mount.split("=", 1)
    if not host:
        raise ValueError(f"Invalid named mount {mount!r}: no host path after '='")
    return name, host


def place_named_mount(
    name: str,
    host: PanPath,
    host_is_file: bool,
    mount_root: str,
    named: dict[str, str],
    named_mounts: str = "NAMED_MOUNTS",
) -> tuple[PanPath, Path]:
    """Where ``NAME=host`` is mounted, as (host path to mount, path inside).

    A folder goes to exactly ``<mount_root>/<named_mounts>/NAME``; a file is
    mounted by its folder, at ``<mount_root>/<named_mounts>/NAME/<folder's
    name>``. What ``$NAME`` is to hold (the folder inside, or the file in it)
    is recorded in ``named``; ValueError when ``named`` already gives NAME
    another value.
    """
    inside = Path(mount_root) / named_mounts / name
    env_value = str(inside)
    if host_is_file:
        inside = inside / host.parent.name
        env_value = str(inside / host.name)
        host = host.parent
    if named.get(name, env_value) != env_value:
        raise ValueError(f"Named mount {name} given twice, for {named[name]!r} and {env_value!r}")
    named[name] = env_value
    return host, inside


def _show_mount(host: object, options: str) -> str:
    return repr(str(host) + (f":{options}" if options else ""))


_MountT = TypeVar("_MountT", bound=Tuple[Any, ...])


def merge_mounts(mounts: Iterable[_MountT]) -> list[_MountT]:
    """The mount rules every scheduler follows, applied to ``(host, inside)``
    or ``(host, inside, options)`` tuples (host: a local path or a URL; options:
    a runtime's ``ro``/``rw``..., "" for none).

    - The same mount given twice is kept once (host paths compared absolute
      and normalised, paths inside normalised).
    - Two mounts at one path inside with different host paths (or options)
      raise ValueError.
    - A mount that another one already brings in at the same place (its host
      path and its path inside both lie under the other's, at the same relative
      path, with the same options) is dropped.

    The mounts kept are returned as given, in the order given.
    """
    # path inside -> (host key, options, the mount first given there)
    by_inside: dict[str, tuple[str, str, _MountT]] = {}
    for mount in mounts:
        host, inside = mount[0], mount[1]
        options = mount[2] if len(mount) > 2 else ""
        host_key, inside_key = _mount_host_key(host), posixpath.normpath(str(inside))
        seen = by_inside.get(inside_key)
        if seen is None:
            by_inside[inside_key] = (host_key, options, mount)
            continue
        if (seen[0], seen[1]) != (host_key, options):
            what = "host paths" if seen[0] != host_key else "options"
            raise ValueError(
                f"Two mounts at {inside_key!r} with different {what}: "
                f"{_show_mount(seen[2][0], seen[1])} and {_show_mount(host, options)}"
            )
    kept: list[_MountT] = []
    for inside_key, (host_key, options, mount) in by_inside.items():
        covered = False
        for outer_inside, (outer_host, outer_options, _) in by_inside.items():
            rel = _relative_under(inside_key, outer_inside)
            if rel and options == outer_options and _relative_under(host_key, outer_host) == rel:
                covered = True
                break
        if not covered:
            kept.append(mount)
    return kept


async def sanitize_mounts(
    mounts: str | Sequence[str] | None,
    mount_root: str,
    named_mounts: str = "NAMED_MOUNTS",
) -> tuple[list[tuple[PanPath, Path]], dict[str, str]]:
    """Turn mount specifications into (host path, path inside) pairs.

    - ``host:inside`` mounts ``host`` (a local path or a ``gs://``-style URL) at
      ``inside``.
    - ``NAME=host`` mounts a folder at exactly ``<mount_root>/<named_mounts>/NAME``;
      a file is mounted by its folder, at ``<mount_root>/<named_mounts>/NAME/
      <folder's name>``. The returned dict maps NAME to the path inside (the
      file's own path for a file), for the caller to export as ``$NAME``.
    - The same mount given twice is kept once; two different host paths at the
      same path inside raise ValueError (as does one NAME naming two places).
    - A mount that another one already brings in at the same place (its host
      path and its path inside both lie under the other's, at the same relative
      path) is dropped.

    Pairs keep the order they were given in. (The container scheduler parses
    its ``host:inside[:ro]`` volumes itself, then follows the same rules
    through ``split_named_mount``, ``place_named_mount`` and ``merge_mounts``.)
    """
    if mounts is None:
        mounts = []
    elif isinstance(mounts, str):
        mounts = [mounts]
    given: list[tuple[PanPath, Path]] = []
    named: dict[str, str] = {}
    for mount in mounts:
        if not isinstance(mount, str) or not mount:
            raise ValueError(
                f"Invalid mount {mount!r}: expected 'host_path:path_inside' or 'NAME=host_path'"
            )
        name_host = split_named_mount(mount)
        if name_host is None:
            given.append(_parse_mount_spec(mount))
            continue
        name, host = name_host
        host_path = PanPath(host)
        given.append(
            place_named_mount(
                name, host_path, await host_path.a_is_file(), mount_root, named, named_mounts
            )
        )
    return merge_mounts(given), named


_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """``items`` in slices of at most ``size`` (one command line per slice)."""
    if size < 1:
        raise ValueError(f"chunks: size must be at least 1, not {size!r}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def one_line(
    text: str | None,
    *,
    strip: str | re.Pattern[str] | None = None,
    prefer: str | None = None,
    last: bool = False,
    limit: int | None = None,
) -> str:
    """A command's (error) output as one line, for a log message or a reason.

    Its non-empty lines, stripped, joined with ``"; "``. ``strip``: a regular
    expression removed where it matches at the start of a line (Slurm's
    ``r"\\w+: error: "``). ``prefer``: when some lines start with it (gcloud's
    ``"ERROR:"``), only those are kept. ``last``: keep only the last line left.
    ``limit``: cut the result to that many characters.
    """
    pattern = re.compile(strip) if isinstance(strip, str) else strip
    lines = []
    for line in (text or "").splitlines():
        line = line.strip()
        if pattern is not None:
            match = pattern.match(line)
            if match:
                line = line[match.end() :].strip()
        if line:
            lines.append(line)
    if prefer is not None:
        lines = [line for line in lines if line.startswith(prefer)] or lines
    if last:
        lines = lines[-1:]
    joined = "; ".join(lines)
    return joined if limit is None else joined[:limit]


def shell_quote(value: object) -> str:
    """Quote one value for bash, refusing NUL."""
    return shlex.quote(check_no_nul(str(value), "Value"))


__all__ = [
    "CommandResult",
    "CommandType",
    "check_env_name",
    "chunks",
    "log_to_file",
    "logger",
    "merge_mounts",
    "normalize_cmd",
    "one_line",
    "place_named_mount",
    "run_command",
    "sanitize_mounts",
    "shell_quote",
    "split_named_mount",
]

if sys.version_info < (3, 10):  # pragma: no cover
    raise RuntimeError("xqute needs Python 3.10 or newer")
