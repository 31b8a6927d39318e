"""Run each job inside a container: docker, podman or apptainer (singularity).

The runtime's client (``docker run``, ``podman run``, ``apptainer exec``) is
started for each job in a session of its own and stays attached to the
container, so, as with the local scheduler, the manager learns that a job ended
when that client exits (a pidfd becomes readable), with no timer. The job's own
wrapper runs inside the container and writes its status and return code into
the job's metadir, which is mounted into the container; those files, not the
client's exit code, say how the job ended.

The workdir (and any extra volumes) are mounted; the wrapper uses the paths as
the container sees them (``SpecPath.mounted``). A named mount ``NAME=folder``
is mounted at exactly ``<DEFAULT_MOUNTED_ROOT>/NAMED_MOUNTS/NAME`` (a file by its
folder, under that) and ``$NAME`` holds its path inside the container; named
mounts, duplicates, clashes and nested mounts follow the rules of
``xqute.utils.sanitize_mounts``. ``post_init`` works the mounts out into
``scheduler.volumes`` (``host:inside`` strings); each job's command line is
built from that list when the job is submitted, so clients (pipen) can add
mounts of their own after ``post_init``.

Resources (``resources``: cpus, memory, gpus) become ``<bin> run`` options for
docker and podman: ``--cpus N``, ``--memory <MB>m`` and, for docker only,
``--gpus N`` (a count of GPUs; podman has no such count: its ``--gpus`` is a
no-op before podman 5 and names devices after, so GPUs are left to the user's
``bin_args`` there, with a debug log). The same option already in ``bin_args``
wins (``--cpus`` or ``--cpu-quota``/``--cpu-period``; ``--memory``/``-m``;
``--gpus``), with one warning. Apptainer's ``--cpus``/``--memory`` need cgroups
control (root, or cgroups v2 delegated through systemd), which HPC nodes often
do not give: they are not added (one warning says so); pass them in
``bin_args`` where they work, and ``--nv`` for GPUs. ``time`` is the wrapper's
timeout, as for the local scheduler. No CPU budget is kept across containers.

Usage and causes (docker/podman): a container is a cgroup of its own, so the
wrapper reads, with bash builtins only, the container's peak memory when the
command ends (``memory.peak`` on cgroups v2, ``memory/memory.max_usage_in_bytes``
on v1, whichever is there: ``peak_memory_mb`` with source ``cgroup``) and the
count of the kernel's OOM kills in it (``oom_kill`` in ``memory.events`` or
``memory/memory.oom_control``), both into ``job.usage.raw`` in the metadir. A
trial that failed with an OOM kill counted in its container ended with cause
``oom`` (the retry policy doubles its memory). Where the kernel keeps no such
count (before Linux 4.13 on v1), a SIGKILL (137) with the peak at 90% or more
of the container's memory limit is taken as ``oom``. No ``inspect`` call per
job. Apptainer's jobs run in the caller's cgroup: no peak memory, no ``oom``.

Killing a docker/podman job stops the container itself through the runtime
(``kill --signal TERM``, then ``KILL`` after a grace period), not only the
client; an apptainer job is a process tree in the client's session, killed as
the local scheduler kills its jobs.

This module imports without any runtime installed; constructing the scheduler
then raises a clear error.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import shutil
import signal
from pathlib import PurePosixPath
from typing import Any, NamedTuple, Sequence

from panpath import PanPath

from .. import defaults
from ..defaults import JobStatus
from ..job import Job
from ..path import SpecPath
from ..path import read_meta
from ..resources import USAGE_RAW_FILE
from ..scheduler import JobQuery, SubmissionError
from ..utils import (
    logger,
    merge_mounts,
    place_named_mount,
    run_command,
    shell_quote,
    split_named_mount,
)
from .local_scheduler import LocalScheduler, _exit_reason, _proc_stat, _session_members

# Runtime kinds, by the name of the binary.
DOCKER = "docker"
PODMAN = "podman"
APPTAINER = "apptainer"

# The client's own output (runtime errors, before the wrapper redirects its
# output to the meta files) goes to this file in the metadir.
CLIENT_LOG_NAME = "job.container.log"

_BAD_NAME_CHARS_RE = re.compile(r"[^a-zA-Z0-9_.-]")
# The ``run`` options (docker/podman) that set each resource, as ``bin_args``
# may already hold them: the first is the one xqute adds.
_RESOURCE_FLAGS = {
    "cpus": ("--cpus", "--cpu-quota", "--cpu-period"),  # docker refuses --cpus with the others
    "memory": ("--memory", "-m"),
    "gpus": ("--gpus",),
}
# Options a docker/podman volume may end with (host:inside:opts).
_VOLUME_OPTIONS_RE = re.compile(r"^(ro|rw|z|Z|O|U|shared|slave|private|rshared|rslave|rprivate|nocopy|delegated|cached|consistent)(,[A-Za-z]+)*$")


def runtime_kind(binary: str) -> str:
    """The runtime kind ("docker", "podman" or "apptainer") of a binary, from its name.

    ``singularity`` is apptainer's former name and takes the same command lines.
    Other names are taken as docker-compatible CLIs (nerdctl, ...).
    """
    name = os.path.basename(binary).lower()
    if "podman" in name:
        return PODMAN
    if "apptainer" in name or "singularity" in name:
        return APPTAINER
    if "docker" not in name:
        logger.warning(
            "Container runtime %r is not docker, podman or apptainer by name; "
            "using docker's command lines for it",
            binary,
        )
    return DOCKER


def given_flag(args: Sequence[str], names: Sequence[str]) -> str | None:
    """Which of the options ``names`` the command-line words ``args`` give
    (``--name value``, ``--name=value``, or a short ``-m`` with its value
    joined, ``-m64m``); None if none of them."""
    for arg in args:
        for name in names:
            if arg == name or arg.startswith(name + "="):
                return name
            if len(name) == 2 and not name.startswith("--") and arg.startswith(name) and not arg.startswith("--"):
                return name
    return None


def _as_list(value: Any, what: str) -> list[str]:
    """A list of strings from None, a string or a sequence of strings."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, Sequence):
        return [os.fspath(item) for item in value]
    raise TypeError(f"{what} must be a string or a list of strings, not {type(value).__name__}")


# The wrapper's reading of the container's own memory cgroup, with builtins
# only (``[``, ``read``, ``echo``): the peak (cgroups v2, then v1), the kernel's
# count of OOM kills in it, and the limit (for kernels that keep no such count).
# Lines for ``job.usage.raw``: "peak <bytes>", "oom_kill <n>", "limit <bytes>".
CGROUP_PEAK_FUNCTION = r"""# the container's own memory cgroup (v2, else v1), read with builtins
_xq_peak() {
    local f k v
    for f in /sys/fs/cgroup/memory.peak /sys/fs/cgroup/memory/memory.max_usage_in_bytes; do
        if [ -r "$f" ] && read -r v <"$f"; then echo "peak $v"; break; fi
    done
    for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
        if [ -r "$f" ]; then
            while read -r k v; do [ "$k" = oom_kill ] && echo "oom_kill $v"; done <"$f"
            break
        fi
    done
    for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
        if [ -r "$f" ] && read -r v <"$f"; then echo "limit $v"; break; fi
    done
}"""
# Without an OOM count: a SIGKILL with the peak at this share of the limit or
# more is taken as the kernel's OOM killer.
OOM_PEAK_SHARE = 0.9


def cgroup_memory_figures(raw: str | None) -> dict[str, int]:
    """``peak``, ``oom_kill`` and ``limit`` from the wrapper's raw usage
    record, those it holds as whole numbers (a v2 limit of "max" is left out)."""
    figures: dict[str, int] = {}
    for line in (raw or "").splitlines()[3:]:
        words = line.split()
        if len(words) == 2 and words[0] in ("peak", "oom_kill", "limit") and words[1].isdigit():
            figures[words[0]] = int(words[1])
    return figures


def oom_from_cgroup(rc: int, figures: dict[str, int]) -> bool:
    """Whether a trial that failed with ``rc`` was ended by the kernel's OOM
    killer, from its container's cgroup ``figures``: any OOM kill counted;
    without a count, a SIGKILL with the peak at ``OOM_PEAK_SHARE`` of a limit
    or more."""
    if rc == 0:
        return False
    if "oom_kill" in figures:
        return figures["oom_kill"] > 0
    peak, limit = figures.get("peak"), figures.get("limit")
    # v1 says "no limit" with a huge number (about 2**63)
    if rc != 137 or not peak or not limit or limit >= 2**60:
        return False
    return peak >= OOM_PEAK_SHARE * limit


class _Mount(NamedTuple):
    """One bind mount: a host path, the path inside, and docker-style options."""

    host: str
    inside: str
    options: str = ""

    def spec(self) -> str:
        """``host:inside[:options]``, the form -v and --bind take."""
        return f"{self.host}:{self.inside}" + (f":{self.options}" if self.options else "")

    def inside_of(self, host_path: str) -> str | None:
        """Where ``host_path`` appears inside the container through this mount."""
        rel = _relative_to(host_path, self.host)
        return None if rel is None else _join(self.inside, rel)

    def host_of(self, inside_path: str) -> str | None:
        """Where ``inside_path`` (a path in the container) is on the host."""
        rel = _relative_to(inside_path, self.inside)
        return None if rel is None else _join(self.host, rel)


def _deepest_mount(mounts: Sequence[_Mount], inside_path: str) -> _Mount | None:
    """The mount that shows ``inside_path`` in the container: of those holding
    it, the one mounted deepest (it hides the others there)."""
    holding = [m for m in mounts if m.host_of(inside_path) is not None]
    return max(holding, key=lambda m: len(PurePosixPath(m.inside).parts), default=None)


def _relative_to(path: str, base: str) -> str | None:
    try:
        rel = PurePosixPath(path).relative_to(PurePosixPath(base))
    except ValueError:
        return None
    return str(rel)


def _join(base: str, rel: str) -> str:
    return base if rel in ("", ".") else str(PurePosixPath(base) / rel)


def _given_mounts(specs: Sequence[str], mount_root: str) -> tuple[list[_Mount], dict[str, str]]:
    """Every mount the specifications give, before the mount rules drop any."""
    mounts: list[_Mount] = []
    named: dict[str, str] = {}
    for spec in specs:
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"Invalid mount {spec!r}: expected 'host_path:path_inside' or 'NAME=host_path'")
        name_host = split_named_mount(spec)
        if name_host is not None:
            name, host = name_host
            host = os.path.abspath(os.path.expanduser(host))
            folder, inside = place_named_mount(
                name, PanPath(host), os.path.isfile(host), mount_root, named
            )
            mounts.append(_Mount(str(folder), str(inside)))
            continue
        parts = spec.split(":")
        options = ""
        if len(parts) == 3 and _VOLUME_OPTIONS_RE.match(parts[2]):
            options = parts.pop()
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(
                f"Invalid mount {spec!r}: expected 'host_path:path_inside[:ro|rw]' or "
                "'NAME=host_path' (a path may not contain ':')"
            )
        host, inside = parts
        if not inside.startswith("/"):
            raise ValueError(f"Invalid mount {spec!r}: the path inside ({inside!r}) must be absolute")
        mounts.append(_Mount(os.path.abspath(os.path.expanduser(host)), inside, options))
    return mounts, named


def parse_mounts(specs: Sequence[str], mount_root: str) -> tuple[list[_Mount], dict[str, str]]:
    """Mounts from ``host:inside[:options]`` and ``NAME=host`` specifications.

    Named mounts are placed, and the mount rules applied, by the helpers
    ``xqute.utils.sanitize_mounts`` uses: a named folder at exactly
    ``<mount_root>/NAMED_MOUNTS/NAME``, a named file by its folder at
    ``<mount_root>/NAMED_MOUNTS/NAME/<folder's name>``; the same mount twice
    kept once; ValueError for two different host paths (or options) at one
    place, or one NAME for two places; a mount nested in another at the same
    relative place (with the same options) dropped. The returned dict maps
    NAME to its path inside the container (the file itself for a file), to be
    exported as an environment variable. Host paths are made absolute.
    """
    mounts, named = _given_mounts(specs, mount_root)
    return merge_mounts(mounts), named


class _Plan(NamedTuple):
    """Where things go in the container, worked out from the options."""

    mounts: list[_Mount]  # the volume_as_cwd folder, the volumes, the workdir's if needed
    named: dict[str, str]  # NAME -> path inside, for NAME=host volumes
    host_workdir: str
    mounted_workdir: str
    cwd: str | None  # the jobs' working folder inside (None: the mounted workdir)


class ContainerScheduler(LocalScheduler):
    """Run each job in a container of ``image``, ``forks`` at a time.

    Args:
        image: the image to run (a ``docker://`` prefix is accepted; docker and
            podman drop it, apptainer keeps it).
        entrypoint: the program inside the image that runs the job's bash
            wrapper (default ``/bin/bash``); a string is split like a shell does.
        bin: the runtime's binary, a name on PATH or a path: docker, podman,
            apptainer or singularity (the kind comes from the binary's name).
        volumes / mount: extra mounts, ``host:inside[:ro]`` or ``NAME=host``
            (a folder mounted at ``DEFAULT_MOUNTED_ROOT/NAMED_MOUNTS/NAME``, a
            file by its folder under that; its path inside exported as
            ``$NAME``). One of the two names, not both.
        volume_as_cwd / mount_as_cwd: a host folder mounted at
            ``DEFAULT_MOUNTED_ROOT/.cwd`` and used as the jobs' working folder; a
            relative ``workdir`` is then taken inside it. Not with ``cwd``.
        remove: remove each container when it ends (docker/podman ``--rm``).
        user: ``uid:gid`` the job runs as (docker/podman; default the caller's).
            Apptainer always runs jobs as the caller.
        bin_args: more arguments for ``<bin> run`` / ``<bin> exec``, put before
            the image; ``--cpus``, ``--memory`` or ``--gpus`` here wins over
            ``resources`` (a base option, mapped onto those for docker/podman).
        **kwargs: the options every scheduler takes (``workdir``, ``forks``,
            ``cwd``, ``mounted_workdir``, ...).

    The constructor only looks the runtime up (and refuses a missing image or
    an entrypoint it cannot split); how the options go together (mounts, workdir,
    cwd, user) is checked by ``post_init()``, which raises ``ValueError`` for a
    bad combination and then fills ``volumes``: the list of ``host:inside[:opts]``
    strings that every job's container gets, read when each job is submitted, so
    entries a client appends afterwards are mounted too.

    The workdir is mounted at ``mounted_workdir`` when given; else a relative
    workdir taken inside the jobs' working folder (``volume_as_cwd``, or ``cwd``
    under a volume) stays where that folder's volume puts it; else (an absolute
    workdir) it is mounted at ``DEFAULT_MOUNTED_ROOT/<DEFAULT_WORKDIR_NAME>``.
    """

    name = "container"
    # --cpus caps each container; no budget is kept across them
    keeps_cpu_budget = False
    # Read through ``self`` (clients and subclasses may override it): where the
    # workdir, the volume_as_cwd folder and named mounts go inside the container.
    DEFAULT_MOUNTED_ROOT = "/mnt/disks"

    def __init__(
        self,
        *args: Any,
        image: str | None = None,
        entrypoint: str | Sequence[str] = defaults.JOBCMD_WRAPPER_LANG,
        bin: str = "docker",
        volumes: str | Sequence[str] | None = None,
        volume_as_cwd: str | None = None,
        mount: str | Sequence[str] | None = None,
        mount_as_cwd: str | None = None,
        remove: bool = True,
        user: str | None = None,
        bin_args: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if not image or not isinstance(image, str):
            raise ValueError("The container scheduler needs an image: pass image='name:tag'")
        found = shutil.which(bin) if bin else None
        if not found:
            raise FileNotFoundError(
                f"Container runtime {bin!r} was not found on PATH; install docker, podman "
                "or apptainer, or pass bin='/path/to/runtime'"
            )
        self.bin = found
        self.kind = runtime_kind(found)
        self.image = image[len("docker://"):] if self.kind != APPTAINER and image.startswith("docker://") else image
        self.entrypoint = (
            shlex.split(entrypoint) if isinstance(entrypoint, str) else [str(a) for a in entrypoint]
        )
        if not self.entrypoint:
            raise ValueError("'entrypoint' must name a program inside the image, e.g. /bin/bash")
        self.remove = bool(remove)
        self.user = user if user is not None else f"{os.getuid()}:{os.getgid()}"
        self.bin_args = shlex.split(bin_args) if isinstance(bin_args, str) else [str(a) for a in bin_args or ()]

        # Option combinations are refused by post_init, not here (2.x clients build
        # the scheduler first and expect the error from post_init).
        self._option_errors: list[str] = []
        if mount is not None and volumes is not None:
            self._option_errors.append("Pass extra mounts as 'volumes' or as 'mount', not both")
        if mount_as_cwd is not None and volume_as_cwd is not None:
            self._option_errors.append("Pass 'volume_as_cwd' or 'mount_as_cwd', not both")
        if user is not None and self.kind == APPTAINER:
            self._option_errors.append(
                f"'user' is not supported by {os.path.basename(found)}: apptainer runs "
                "jobs as the calling user"
            )

        workdir_arg = args[0] if args else kwargs.pop("workdir", None)
        # What post_init works from (2.x clients read these keys, pipen notably
        # ``_kwargs["volume_as_cwd"]``); the options as given, not resolved.
        options = {
            "volumes": volumes if volumes is not None else mount,
            "volume_as_cwd": volume_as_cwd if volume_as_cwd is not None else mount_as_cwd,
            "workdir": workdir_arg,
            "mounted_workdir": kwargs.pop("mounted_workdir", None),
        }
        # The base class needs a workdir now, and the manager creates it at once:
        # put it where post_init will, when the options allow (a relative workdir
        # in a volume_as_cwd folder must not land in the manager's folder).
        try:
            plan = self._plan(options, kwargs.get("cwd"))
        except (ValueError, TypeError):  # post_init says what is wrong
            host_workdir = os.fspath(workdir_arg or defaults.DEFAULT_WORKDIR_NAME)
            mounted_workdir = options["mounted_workdir"]
        else:
            host_workdir, mounted_workdir = plan.host_workdir, plan.mounted_workdir
        super().__init__(host_workdir, *args[1:], mounted_workdir=mounted_workdir, **kwargs)
        self._kwargs.update(options)

        # host:inside[:opts] strings, filled by post_init; clients may append more
        self.volumes: list[str] = []
        # NAME -> path inside, for the named volumes post_init mounted
        self.path_envs: dict[str, str] = {}
        self._volumes_set = False
        self._mounts_cache: tuple[tuple[str, ...], list[_Mount], dict[str, str]] | None = None
        # container name -> pid of the client (or of ``<bin> wait``) attached to it
        self._clients: dict[str, int] = {}
        # resources that were not applied, said once each
        self._said_unapplied: set[str] = set()

    # ------------------------------------------------------------ set-up
    async def post_init(self) -> None:
        """Check the options together, place the workdir, and fill ``volumes``.

        Raises ValueError for options that do not go together (``volumes`` and
        ``mount``, ``volume_as_cwd`` and ``cwd``, a relative workdir in a ``cwd``
        that no volume mounts, a non-local workdir, a bad mount, ...).
        Reads ``DEFAULT_WORKDIR_NAME`` now: clients set it after importing xqute.
        Runs once: a second call changes nothing (clients move ``workdir`` after
        the first one, and ``volumes`` must not get the same mounts twice).
        """
        await super().post_init()
        if self._volumes_set:
            return
        if self._option_errors:
            raise ValueError(self._option_errors[0])
        plan = self._plan(self._kwargs, self.cwd)
        self.workdir = SpecPath(plan.host_workdir, mounted=plan.mounted_workdir)
        if plan.cwd is not None:
            self.cwd = plan.cwd
        for spec in (m.spec() for m in plan.mounts):
            if spec not in self.volumes:
                self.volumes.append(spec)
        self.path_envs = plan.named
        self._volumes_set = True

    def _plan(self, options: dict[str, Any], cwd: Any) -> _Plan:
        """Mounts, workdir and cwd from the options; ValueError if they clash."""
        volume_as_cwd = options.get("volume_as_cwd")
        if volume_as_cwd and cwd:
            raise ValueError(
                "'volume_as_cwd' (or 'mount_as_cwd') sets the jobs' working folder; "
                "do not pass 'cwd' with it"
            )
        workdir = os.fspath(options.get("workdir") or defaults.DEFAULT_WORKDIR_NAME)
        if "://" in workdir:
            raise ValueError(f"The container scheduler needs a local workdir to mount, not {workdir!r}")
        mounted = options.get("mounted_workdir")
        if mounted is not None:
            mounted = os.fspath(mounted)
            if not mounted.startswith("/"):
                raise ValueError(f"'mounted_workdir' must be an absolute path inside the container, not {mounted!r}")

        specs = _as_list(options.get("volumes"), "volumes")
        if volume_as_cwd:
            cwd = f"{self.DEFAULT_MOUNTED_ROOT}/.cwd"
            specs.insert(0, f"{os.fspath(volume_as_cwd)}:{cwd}")
        mounts, named = self._parse_volumes(specs)

        workdir = os.path.expanduser(workdir)
        if not os.path.isabs(workdir) and cwd:
            # taken inside the jobs' working folder, found on the host through its volume
            found = _deepest_mount(mounts, str(cwd))
            if found is None:
                raise ValueError(
                    f"The relative workdir {workdir!r} is taken inside the jobs' working "
                    f"folder {str(cwd)!r}, which no volume mounts; give an absolute workdir or "
                    "mount the folder that holds cwd"
                )
            host = os.path.normpath(os.path.join(found.host_of(str(cwd)) or "", workdir))
            inside = mounted or os.path.normpath(os.path.join(str(cwd), workdir))
        else:
            host = os.path.abspath(workdir)
            inside = mounted or f"{self.DEFAULT_MOUNTED_ROOT}/{defaults.DEFAULT_WORKDIR_NAME}"
        # the workdir needs a mount of its own unless a writable volume already
        # shows this very folder at that place
        shown = _deepest_mount(mounts, inside)
        if shown is None or shown.host_of(inside) != host or shown.options.startswith("ro"):
            workdir_mount = _Mount(host, inside)
            mounts, _ = self._parse_volumes([*(m.spec() for m in mounts), workdir_mount.spec()])
        return _Plan(mounts, named, host, inside, None if cwd is None else str(cwd))

    def _parse_volumes(self, specs: Sequence[str]) -> tuple[list[_Mount], dict[str, str]]:
        """The mounts to make from volume specs, by the rules of ``parse_mounts``;
        ValueError also for a path the runtime would misread."""
        mounts, named = _given_mounts(specs, self.DEFAULT_MOUNTED_ROOT)
        for m in mounts:
            self._check_mount_path(m.host, "host")
            self._check_mount_path(m.inside, "container")
        return merge_mounts(mounts), named

    def _current_mounts(self) -> tuple[list[_Mount], dict[str, str]]:
        """The mounts ``volumes`` holds now, and the named ones' paths inside."""
        key = tuple(self.volumes)
        if self._mounts_cache is None or self._mounts_cache[0] != key:
            mounts, named = self._parse_volumes(key)
            self._mounts_cache = (key, mounts, {**self.path_envs, **named})
        return self._mounts_cache[1], self._mounts_cache[2]

    def _make_host_folders(self) -> None:
        """Create the host folders of the volumes that do not exist yet.

        docker creates a missing host path of ``-v`` itself, and clients rely on
        it (pipen mounts its output folder before anything made it); podman and
        apptainer refuse it. Made here, as the manager's user, for every runtime.
        """
        # every volume given (read by container_command just before), with those
        # the mount rules dropped: the job expects their folders there too
        given, _ = _given_mounts(self.volumes, self.DEFAULT_MOUNTED_ROOT)
        for m in given:
            if not os.path.exists(m.host):
                try:
                    os.makedirs(m.host, exist_ok=True)
                except OSError as exc:
                    raise SubmissionError(f"cannot create the host folder of volume {m.spec()!r}: {exc}") from exc

    def _check_mount_path(self, path: str, side: str) -> None:
        # -v and --bind separate fields with ':' (and --bind mounts with ',')
        bad = ":" if self.kind != APPTAINER else ":,"
        if any(ch in path for ch in bad) or "\n" in path:
            raise ValueError(
                f"Cannot mount {path!r} ({side} side) with {self.kind}: the path contains "
                f"one of {' '.join(repr(c) for c in bad)} or a newline"
            )

    # ------------------------------------------------------------ command lines
    def container_name(self, job: Job) -> str:
        """A fresh container name for this trial of ``job`` (docker/podman)."""
        base = _BAD_NAME_CHARS_RE.sub("_", self.job_name(job)).lstrip("_.-") or "xqute"
        # a token: containers kept (remove=False) from an earlier run keep their names
        return f"{base}-t{job.trial_count}-{secrets.token_hex(3)}"

    def container_command(self, job: Job, container_name: str | None = None) -> list[str]:
        """The argv that runs ``job``'s wrapper in a container.

        The mounts are those ``volumes`` holds now (ValueError for a bad entry).
        """
        mounts, _ = self._current_mounts()
        wrapper = str((job.metadir / self.wrapped_script_name).mounted)
        workdir_inside = str(self.cwd) if self.cwd else str(self.workdir.mounted)
        if self.kind == APPTAINER:
            cmd = [self.bin, "exec", "--pwd", workdir_inside]
            for m in mounts:
                cmd += ["--bind", m.spec()]
        else:
            cmd = [self.bin, "run"]
            if container_name:
                cmd += ["--name", container_name]
            if self.remove:
                cmd.append("--rm")
            cmd += ["--user", self.user, "--workdir", workdir_inside]
            for m in mounts:
                cmd += ["-v", m.spec()]
        cmd += self.resource_options(job)
        return [*cmd, *self.bin_args, self.image, *self.entrypoint, wrapper]

    def resource_options(self, job: Job) -> list[str]:
        """``job.resources`` as ``<bin> run`` options: ``--cpus N``,
        ``--memory <MB>m`` and (docker only) ``--gpus N``. The same option in
        ``bin_args`` wins. ``time`` is the wrapper's timeout. Apptainer: none
        (see the module's notes)."""
        asked = getattr(job, "resources", None)
        if not asked:
            return []
        if self.kind == APPTAINER:
            unapplied = [
                key for key, value in (("cpus", asked.cpus), ("memory", asked.memory_mb), ("gpus", asked.gpus))
                if value
            ]
            if unapplied and "apptainer" not in self._said_unapplied:
                self._said_unapplied.add("apptainer")
                logger.warning(
                    "%s scheduler: resources' %s are not applied by %s (its --cpus/--memory "
                    "need cgroups control, and --nv gives all GPUs); pass the options in "
                    "bin_args where they work",
                    self.name, "/".join(unapplied), os.path.basename(self.bin),
                )
            return []
        wanted: dict[str, list[str]] = {}
        if asked.cpus is not None:
            wanted["cpus"] = ["--cpus", str(asked.cpus)]
        if asked.memory_mb is not None:
            wanted["memory"] = ["--memory", f"{asked.memory_mb}m"]
        if asked.gpus:
            if self.kind == DOCKER:
                wanted["gpus"] = ["--gpus", str(asked.gpus)]
            elif "gpus" not in self._said_unapplied:
                self._said_unapplied.add("gpus")
                logger.debug(
                    "%s scheduler: resources' gpus are not applied by %s, which has no "
                    "--gpus count (its --gpus names devices, or does nothing before "
                    "podman 5); pass e.g. --device nvidia.com/gpu=all in bin_args",
                    self.name, os.path.basename(self.bin),
                )
        options: list[str] = []
        for resource, words in wanted.items():
            given = given_flag(self.bin_args, _RESOURCE_FLAGS[resource])
            if given is not None:
                self.raw_option_wins(resource, given)
                continue
            options += words
        return options

    def jobcmd_shebang(self, job: Job) -> str:
        """``#!/bin/bash``, and a comment naming the runtime and image."""
        return (
            f"{super().jobcmd_shebang(job)}\n"
            f"# run by {os.path.basename(self.bin)} in image "
            f"{self.image.replace(chr(10), ' ')}"
        )

    def peak_memory_file(self, job: Job) -> str | None:
        """The container's peak memory on cgroups v1, as docker and podman
        show it inside (the wrapper tries v2's ``memory.peak`` first: see
        ``_wrapper_peak_function``); None for apptainer (no cgroup of its own)."""
        if self.kind == APPTAINER:
            return None
        return "/sys/fs/cgroup/memory/memory.max_usage_in_bytes"

    def _wrapper_peak_function(self, job: Job) -> str:
        """The wrapper's ``_xq_peak``: for docker/podman, the container's peak
        memory, its count of OOM kills and its limit (``CGROUP_PEAK_FUNCTION``),
        trying the v2 files, then the v1 ones, with builtins only."""
        if self.kind == APPTAINER:
            return super()._wrapper_peak_function(job)
        return CGROUP_PEAK_FUNCTION

    async def exit_cause(self, job: Job, rc: int) -> str:
        """The base's reading of ``rc``; a failure (not the wrapper's timeout)
        whose container counted an OOM kill is ``oom`` (see the module's notes).
        Read from the wrapper's raw usage record in the metadir: no runtime call."""
        cause = await super().exit_cause(job, rc)
        if cause in ("ok", "timeout") or self.kind == APPTAINER:
            return cause
        try:
            raw = await read_meta(job.metadir / USAGE_RAW_FILE)
        except OSError:
            return cause
        return "oom" if oom_from_cgroup(rc, cgroup_memory_figures(raw)) else cause

    def jobcmd_init(self, job: Job) -> str:
        """Export the named mounts' paths (inside the container), then the usual."""
        _, named = self._current_mounts()
        lines = [f"export {name}={shell_quote(path)}" for name, path in named.items()]
        lines.append(super().jobcmd_init(job))
        return "\n".join(lines)

    # ------------------------------------------------------------ the interface
    async def submit_job(self, job: Job) -> str:
        name = None if self.kind == APPTAINER else self.container_name(job)
        try:
            if not self._volumes_set:  # a client that submits without creating jobs first
                await self.post_init()
            # volumes is read now: entries appended after post_init are mounted
            argv = self.container_command(job, name)
        except ValueError as exc:  # bad options, or a bad entry a client added to volumes
            raise SubmissionError(str(exc)) from exc
        self._make_host_folders()
        await self.wrapped_job_script(job)
        log_path = os.path.join(str(job.metadir), CLIENT_LOG_NAME)
        try:
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise SubmissionError(f"cannot write {log_path}: {exc}") from exc
        try:
            # the full command line, for whoever debugs a failed job
            os.write(log_fd, f"# {shlex.join(argv)}\n".encode())
            pid = self.spawn(argv, output_fd=log_fd)
        except OSError as exc:
            raise SubmissionError(f"cannot start {self.bin}: {exc}") from exc
        finally:
            os.close(log_fd)
        self._watch(pid, job, child=True)
        if name is None:
            return str(pid)
        self._clients[name] = pid
        return name

    async def query_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobQuery]:
        """In memory: a job runs while its client runs. The runtime is asked
        (once, for all such jobs) only about containers whose client is gone
        while their files do not say they ended, or that an earlier manager
        started."""
        if self.kind == APPTAINER:
            return await super().query_jobs(jobs)
        answers: dict[Job, JobQuery] = {}
        ask: dict[str, tuple[Job, str]] = {}
        for job in jobs:
            name = job.jid or ""
            pid = self._clients.get(name)
            if pid is None:
                if not name:
                    answers[job] = JobQuery(JobQuery.ENDED, f"no container recorded for job {job.index}")
                else:  # started by an earlier manager of this workdir
                    ask[name] = (job, f"container {name} is gone")
                continue
            if pid in self._running:
                answers[job] = JobQuery(JobQuery.RUNNING)
                continue
            if pid not in self._ended:
                answers[job] = JobQuery(JobQuery.ENDED, f"container {name} is gone")
                continue
            status = self._ended.pop(pid)
            del self._clients[name]
            if JobStatus.is_final(await job.read_status_file()):
                answers[job] = JobQuery(JobQuery.ENDED)
                continue
            ask[name] = (job, self._client_exit_reason(job, status))
        if ask:
            states = await self._container_states(list(ask))
            for name, (job, reason) in ask.items():
                state = states.get(name)
                if state in ("running", "created", "configured", "initialized", "paused", "restarting"):
                    # the client went away but the container did not: follow it
                    if await self._follow(name, job):
                        answers[job] = JobQuery(
                            JobQuery.RUNNING if state == "running" else JobQuery.PENDING
                        )
                        continue
                answers[job] = JobQuery(
                    JobQuery.ENDED, reason + (f" (container state: {state})" if state else "")
                )
        return answers

    def _client_exit_reason(self, job: Job, wait_status: int | None) -> str:
        what = f"{os.path.basename(self.bin)} run"
        if wait_status is None:
            head = f"{what} ended before the job recorded its return code"
        elif os.WIFSIGNALED(wait_status):
            head = _exit_reason(wait_status).replace("the job's wrapper", what)
        else:
            head = (
                f"{what} exited with {os.WEXITSTATUS(wait_status)} before the job "
                "recorded its return code"
            )
        tail = self._client_log_tail(job)
        return f"{head}: {tail}" if tail else head

    def _client_log_tail(self, job: Job, lines: int = 5) -> str:
        try:
            with open(os.path.join(str(job.metadir), CLIENT_LOG_NAME), encoding="utf-8", errors="replace") as fh:
                text = fh.read()[-4000:]
        except OSError:
            return ""
        kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("# ")]
        # the runtime's final word ("Error: ...", "docker: Error response ...") says it best
        errors = [ln for ln in kept if "Error" in ln.split(":", 1)[0] or ln.startswith("docker: ")]
        return " | ".join(errors[-1:] if errors else kept[-lines:])

    async def _container_states(self, names: Sequence[str]) -> dict[str, str]:
        """{name: state} for the containers that exist, in one runtime call."""
        argv = [self.bin, "ps", "-a", "--format", "{{.Names}}\t{{.State}}"]
        for name in names:
            argv += ["--filter", f"name=^{name}$"]
        result = await run_command(*argv, timeout=60)
        if not result.ok:
            logger.warning("Could not list containers: %s", result.stderr.strip() or result.rc)
            return {}
        wanted = set(names)
        states = {}
        for line in result.stdout.splitlines():
            cname, _, state = line.strip().partition("\t")
            if cname in wanted:
                # docker says "running", podman 4 "Up 2 seconds ago"
                word = (state.split() or [""])[0].lower()
                states[cname] = "running" if word == "up" else word
        return states

    async def _follow(self, name: str, job: Job) -> bool:
        """Watch a container this manager has no client for, through ``<bin> wait``."""
        try:
            pid = self.spawn([self.bin, "wait", name])
        except OSError as exc:
            logger.warning("Cannot follow container %s: %s", name, exc)
            return False
        self._clients[name] = pid
        self._watch(pid, job, child=True)
        return True

    async def kill_jobs(self, jobs: Sequence[Job]) -> None:
        """Stop the jobs' containers through the runtime: SIGTERM (the wrapper
        passes it on and records the end), then SIGKILL to containers and
        clients still there after a grace period."""
        if self.kind == APPTAINER:
            await super().kill_jobs(jobs)
            return
        for job in jobs:
            if job.jid and job.jid not in self._clients:
                # an earlier manager's container: attach, so its end is seen
                await self._follow(job.jid, job)
        live = {
            job.jid: self._clients[job.jid]
            for job in jobs
            if job.jid and self._clients.get(job.jid) in self._running
        }
        if not live:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + defaults.KILL_GRACE
        # A container is signalled only once it runs; one just submitted may still
        # be being created, so those are asked about again until they run.
        pending = set(live)
        while pending and loop.time() < deadline:
            states = await self._container_states(sorted(pending))
            running = sorted(n for n in pending if states.get(n) == "running")
            if running:
                result = await run_command(
                    self.bin, "kill", "--signal", "TERM", *running, timeout=60
                )
                # podman refuses the whole call if one of them ended meanwhile
                done = set(running) if result.ok else set(result.stdout.split())
                pending -= done
            pending = {n for n in pending if live[n] in self._running and states.get(n) != "exited"}
            if pending:
                await self._wait_clients([live[n] for n in pending], 0.2)
        if await self._wait_clients(live.values(), max(0.0, deadline - loop.time())):
            return
        left = {n: p for n, p in live.items() if p in self._running}
        logger.warning(
            "Containers %s did not end %s s after SIGTERM: killing them", ", ".join(sorted(left)), defaults.KILL_GRACE
        )
        await run_command(self.bin, "kill", "--signal", "KILL", *left, timeout=60)
        # what is left in the clients' sessions (each client leads its own)
        windows = {}
        for pid in left.values():
            fields = _proc_stat(pid)
            if fields is not None and len(fields) > 19:
                windows[pid] = (int(fields[19]), float("inf"))
        for member in _session_members(windows):
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not await self._wait_clients(left.values(), defaults.KILL_GRACE):
            logger.error("Containers %s did not end after SIGKILL", ", ".join(sorted(left)))
        if self.remove:
            # a client killed before its container started leaves it "created"
            rm = [self.bin, "rm", "-f"] + (["--time", "0"] if self.kind == PODMAN else [])
            await run_command(*rm, *left, timeout=60)

    async def _wait_clients(self, pids: Any, timeout: float) -> bool:
        """Wait until the given client processes exit; True if they all did."""
        loop = asyncio.get_running_loop()
        waiters = [
            self._exit_waiters.setdefault(pid, loop.create_future())
            for pid in pids
            if pid in self._running
        ]
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)
        return all(pid not in self._running for pid in pids)


__all__ = ["ContainerScheduler", "runtime_kind", "parse_mounts", "given_flag", "CLIENT_LOG_NAME"]
