"""One remote host reached with the real OpenSSH client, over one multiplexed
connection (ControlMaster) whose socket lives in a private directory."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from typing import Any, Callable, Mapping, Sequence

from ...utils import CommandResult, logger, run_command

# Keys a host's entry in ``servers`` may have.
HOST_OPTIONS = ("port", "user", "keyfile", "ctrl_persist", "ctrl_dir", "cgroup_dir")
# sun_path holds 108 bytes; ssh adds ".XXXXXXXXXXXXXXXX" to the path while it
# sets a master up.
_MAX_SOCKET_PATH = 107 - 17
# ssh's own failures (cannot connect, host key, authentication) exit with 255.
SSH_FAILED = 255


class HostUnavailable(Exception):
    """The host could not be reached or refused us. ``permanent`` when retrying
    cannot help (unknown host key, authentication refused, no such host)."""

    def __init__(self, host: str, message: str, permanent: bool = False) -> None:
        super().__init__(f"host {host}: {message}")
        self.host = host
        self.permanent = permanent


# ssh errors that retrying cannot cure
_PERMANENT_PATTERNS = (
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "Permission denied",
    "Could not resolve hostname",
    "Bad configuration option",
    "Bad port",
    "no argument after keyword",
)


def describe_ssh_error(stderr: str) -> tuple[str, bool]:
    """ssh's error output as one line, and whether it is a permanent refusal."""
    lines = [line.strip() for line in stderr.replace("\r", "").splitlines() if line.strip()]
    # the warnings ssh prints before the real error are noise here
    lines = [line for line in lines if not line.startswith("Warning: Permanently added")]
    text = " | ".join(lines) or "ssh failed without saying why"
    permanent = any(pattern in text for pattern in _PERMANENT_PATTERNS)
    if "Host key verification failed" in text:
        text += (
            " (the host's key is not in your known_hosts, or does not match it: check the"
            " key and add it, e.g. with ssh-keyscan; host-key checking is yours to relax"
            " with StrictHostKeyChecking in your ssh config, xqute keeps it on)"
        )
    return text, permanent


def _socket_name(label: str, index: int) -> str:
    # readable but short and free of path characters; the index keeps it unique
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:24]
    return f"{index}-{safe}.sock"


class SshHost:
    """A host in ``servers``: how to reach it, its connection and its health.

    Args:
        label: the host as written in ``servers`` (also the ``@host`` of job ids);
            passed to ssh as the destination, so aliases from ``~/.ssh/config``
            and ``ssh://user@host:port`` work.
        ssh: the ssh client binary.
        index: position in ``servers`` (keeps socket names unique).
        socket_dir: called, on the first connection, for the private directory
            of the control socket (unless the host's ``ctrl_dir`` names another).
        ssh_args: extra arguments put before xqute's own options (ssh keeps the
            first value it sees for an option, so these win).
        connect_timeout: ssh's ConnectTimeout, in seconds.
        command_timeout: longest time any one ssh call may take, in seconds.
        port, user, keyfile, ctrl_persist, ctrl_dir: the host's own options.
        cgroup_dir: where, on the host, its user may make memory cgroups (a
            folder of a memory cgroup hierarchy); None: looked for (the user's
            own memory cgroup, its parent, the hierarchy's root); False: no
            cgroups on this host.
    """

    def __init__(
        self,
        label: str,
        *,
        ssh: str,
        index: int,
        socket_dir: Callable[[], str] | None = None,
        ssh_args: Sequence[str] = (),
        connect_timeout: float = 10,
        command_timeout: float = 60,
        port: int | str | None = None,
        user: str | None = None,
        keyfile: str | os.PathLike | None = None,
        ctrl_persist: int | float = 600,
        ctrl_dir: str | os.PathLike | None = None,
        cgroup_dir: str | os.PathLike | bool | None = None,
    ) -> None:
        if not isinstance(label, str) or not label or label.startswith("-"):
            raise ValueError(f"Invalid ssh server {label!r}: expected a host name")
        if port is not None and (not str(port).isdigit() or not 0 < int(port) < 65536):
            raise ValueError(f"Invalid port {port!r} for ssh server {label!r}")
        if ctrl_persist is not None and float(ctrl_persist) <= 0:
            raise ValueError(f"ctrl_persist of ssh server {label!r} must be > 0 seconds")
        if cgroup_dir is not None and cgroup_dir is not False:
            if not isinstance(cgroup_dir, (str, os.PathLike)) or not os.fspath(cgroup_dir).startswith("/"):
                raise ValueError(
                    f"cgroup_dir of ssh server {label!r} must be an absolute path on the "
                    f"host, None (look for one) or False (none), got {cgroup_dir!r}"
                )
        self.cgroup_dir: str | bool | None = (
            cgroup_dir if cgroup_dir is None or cgroup_dir is False else os.fspath(cgroup_dir)
        )
        # why no memory cgroup can be made on the host, once its launcher said
        self.no_cgroup_reason: str | None = None
        self.no_cgroup_warned = self.no_cgroup_said = False
        self.label = label
        self.ssh = ssh
        self.port = int(port) if port is not None else None
        self.user = user
        self.keyfile = os.fspath(keyfile) if keyfile is not None else None
        self.ctrl_persist = int(float(ctrl_persist)) if ctrl_persist else 600
        self.own_ctrl_dir = os.fspath(ctrl_dir) if ctrl_dir is not None else None
        self._socket_name = _socket_name(label, index)
        self._make_socket_dir = socket_dir
        # the folder of the socket, once one is needed
        self.socket_dir: str | None = self.own_ctrl_dir
        if self.own_ctrl_dir:
            self._check_socket_path()
        self.ssh_args = [str(arg) for arg in ssh_args]
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._lock = asyncio.Lock()
        self._master_pid: int | None = None
        self._connect_failure: tuple[float, HostUnavailable | None] = (0.0, None)
        # health: when it started failing (None: fine), the last error, when the
        # last attempt to reach it was made
        self.failing_since: float | None = None
        self.last_error = ""
        self.last_attempt = 0.0
        self.permanent_error = False
        # when its jobs' liveness was last asked (the scheduler rate-limits it)
        self.last_liveness_at = float("-inf")

    # --------------------------------------------------------------- the socket
    @property
    def socket(self) -> str:
        """The control socket: in the host's ``ctrl_dir`` if it has one, else in
        the scheduler's private directory."""
        if self.socket_dir is None:
            raise RuntimeError(f"no directory for the control socket of ssh host {self.label} yet")
        return os.path.join(self.socket_dir, self._socket_name)

    def _check_socket_path(self) -> None:
        if len(self.socket.encode()) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"The control socket path {self.socket!r} for ssh server {self.label!r} "
                "is too long for a Unix socket; use a shorter ctrl_dir"
            )

    # --------------------------------------------------------------- arguments
    def _args(self, *extra: str) -> list[str]:
        args = [self.ssh, *self.ssh_args]
        args += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(self.connect_timeout)}"]
        # a host that vanishes is noticed by the master within ~15 s
        args += ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        args += ["-o", f"ControlPath={self.socket}"]
        if self.port is not None:
            args += ["-p", str(self.port)]
        if self.user:
            args += ["-l", self.user]
        if self.keyfile:
            args += ["-i", self.keyfile]
        args += list(extra)
        return args

    # --------------------------------------------------------------- health
    def mark_ok(self) -> None:
        if self.failing_since is not None:
            logger.info("ssh host %s answers again", self.label)
        self.failing_since = None
        self.last_error = ""
        self.permanent_error = False

    def mark_failed(self, error: HostUnavailable) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            logger.warning("ssh host %s is unavailable: %s", self.label, error)
        self.last_error = str(error)
        self.permanent_error = error.permanent

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    # --------------------------------------------------------------- connection
    @property
    def connected(self) -> bool:
        return self.socket_dir is not None and os.path.exists(self.socket)

    async def connect(self) -> None:
        """Make sure the master connection is up; raise HostUnavailable if not."""
        if self.connected:
            return
        asked_at = time.monotonic()
        async with self._lock:
            if self.connected:
                return
            failed_at, failure = self._connect_failure
            if failure is not None and failed_at >= asked_at:
                # an attempt made while we waited has just failed: no second one
                raise failure
            self.last_attempt = time.monotonic()
            if self.socket_dir is None:
                if self._make_socket_dir is None:
                    raise RuntimeError(f"no directory for the control socket of ssh host {self.label}")
                self.socket_dir = self._make_socket_dir()
                self._check_socket_path()
            os.makedirs(self.socket_dir, mode=0o700, exist_ok=True)
            # -f -N: the master goes to the background once authenticated (its
            # stdio on /dev/null) and stays ctrl_persist seconds after the last use
            result = await run_command(
                *self._args(
                    "-o", "ControlMaster=yes",
                    "-o", f"ControlPersist={self.ctrl_persist}",
                    "-N", "-f", self.label,
                ),
                timeout=self.connect_timeout + 15,
            )
            if result.rc != 0 or not self.connected:
                message, permanent = describe_ssh_error(result.stderr)
                error = HostUnavailable(self.label, message, permanent)
                self._connect_failure = (time.monotonic(), error)
                raise error
            check = await run_command(*self._args("-O", "check", self.label), timeout=10)
            found = re.search(r"pid=(\d+)", check.stderr + check.stdout)
            self._master_pid = int(found.group(1)) if found else None
            logger.debug("ssh master to %s is up (pid %s)", self.label, self._master_pid)

    async def run(
        self, command: str, input: str | None = None, timeout: float | None = None
    ) -> CommandResult:
        """Run ``command`` (a string for the login shell) over the master connection.

        Raises HostUnavailable when ssh itself fails (exit 255), after one retry
        with a fresh master (the old one may have died with a network hiccup).
        """
        for attempt in (1, 2):
            await self.connect()
            self.last_attempt = time.monotonic()
            result = await run_command(
                *self._args("-o", "ControlMaster=no", self.label, command),
                input=input,
                timeout=timeout or self.command_timeout,
            )
            if result.rc == -1:  # our timeout
                await self._drop_master()
                raise HostUnavailable(self.label, f"no answer within {timeout or self.command_timeout:.0f} s")
            if result.rc != SSH_FAILED:
                return result
            message, permanent = describe_ssh_error(result.stderr)
            if permanent or attempt == 2:
                raise HostUnavailable(self.label, message, permanent)
            await self._drop_master()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _drop_master(self) -> None:
        """Forget a master that no longer works (its socket goes with it)."""
        if self.socket_dir is not None:
            await self._end_master()

    async def close(self) -> None:
        """End the master connection and remove its socket."""
        if self.socket_dir is None:  # never connected
            return
        await self._end_master()
        if self.own_ctrl_dir is None:
            self.socket_dir = None  # the scheduler removes its private folder

    async def _end_master(self) -> None:
        # (no socket: the master has already ended, and removed it)
        if os.path.exists(self.socket):
            result = await run_command(*self._args("-O", "exit", self.label), timeout=10)
            if result.rc != 0 and self._master_pid:
                self._kill_master()
        self._master_pid = None
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass

    def _kill_master(self) -> None:
        """SIGTERM the master we started (its pid came from ``ssh -O check``),
        if that pid still runs ssh with our socket (pids are reused)."""
        pid = self._master_pid
        if os.path.isdir("/proc"):  # without /proc, the pid is all we know
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if self.socket.encode() not in fh.read():
                        return
            except OSError:
                return
        try:
            os.kill(pid, signal.SIGTERM)  # type: ignore[arg-type]
        except (ProcessLookupError, PermissionError):
            pass


def host_options(label: Any, options: Any) -> Mapping[str, Any]:
    """Check one ``servers`` entry's options; returns them."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(
            f"Options of ssh server {label!r} must be a mapping of "
            f"{', '.join(HOST_OPTIONS)}, got {options!r}"
        )
    unknown = sorted(set(options) - set(HOST_OPTIONS))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(map(repr, unknown))} for ssh server {label!r}; "
            f"allowed: {', '.join(HOST_OPTIONS)}"
        )
    return options
