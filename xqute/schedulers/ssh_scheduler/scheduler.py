"""Run jobs on several machines reached with OpenSSH, sharing a file system.

A job is launched detached on the remote host (its own session, via a POSIX
shell launcher; no Python over there) and its id is ``pid@host``: submission
returns at once, so ``forks`` jobs run at the same time over all the hosts.
The jobs' meta files, on the shared file system, say how they are doing; the
jobs the files leave open are checked in one ssh call per host per round.

Resources and usage: ``resources``' time is the wrapper's ``timeout`` (rc 124,
cause ``timeout``); cpus and gpus are not enforced (no scheduler over there).
Memory: the launch script makes each trial a memory cgroup on its host where
the remote user may (``cgroup_dir``, else looked for: the login's own memory
cgroup, its parent, the hierarchy's root; v1, or v2 with the controller
delegated), limited to the memory asked (none asked: no limit, for the peak);
the wrapper joins it with a builtin as its first line, reads its peak at the
end, and notes its OOM counters in ``job.memory`` before it records its rc,
so that an OOM kill makes the cause ``oom``. Where no cgroup can be made, the
command's shell sets ``ulimit -S -d`` (best effort; ``oom`` when the job's
stderr ends with an allocation error). Ended trials' cgroups are removed in
the host's next launch call, and at ``close``. The usage record has the
wrapper's wall time, CPU (bash's ``times``), host (the remote's
``$HOSTNAME``) and the cgroup's peak (null without a cgroup: bash has no
builtin for its children's peak). A job lost with its host (``lost_after``) ends with cause
``node_fail`` and host its ``servers`` label, which a retry then keeps away
from (``Resources.exclude_nodes``) while another host is there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from typing import Any, Mapping, Sequence

from ... import defaults
from ...defaults import JobStatus
from ...job import Job
from ...scheduler import JobQuery, Scheduler, SubmissionError
from ...path import read_meta
from ...utils import logger
from ..local_scheduler import _allocation_failed
from .host import HostUnavailable, SshHost, host_options
from .launcher import (
    REMOTE_SHELL,
    alive_command,
    cgroup_cleanup_script,
    kill_script,
    launch_script,
    parse_alive_output,
    parse_cgroup_output,
    parse_launch_output,
    parse_number,
)

# A freshly launched job may not have exec'd its wrapper yet when first asked
# about: within this many seconds, a pid whose command line is not yet the
# wrapper's is "unknown", not "ended".
_LAUNCH_SETTLE = 5.0
# Seconds the first launch of a submission batch waits for the others to join
# its ssh call.
_LAUNCH_WINDOW = 0.005
# The wrapper's note (in the job's metadir) of how its memory was held: its
# cgroup and the cgroup's OOM counters, or the best-effort limit.
MEMORY_NOTE = "job.memory"
# Statuses of a job that holds (or is about to hold) a slot on its host.
_HOLDING = (JobStatus.INIT, JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.KILLING)


class SshScheduler(Scheduler):
    """Spread jobs over SSH hosts that share the manager's file system.

    Args:
        ssh: the OpenSSH client to run (the user's ``~/.ssh/config``, agent,
            ProxyJump and keys apply, since this is the real client).
        servers: host names (or ``~/.ssh/config`` aliases, or
            ``ssh://user@host:port``) as a list, or a mapping
            ``{host: {port, user, keyfile, ctrl_persist, ctrl_dir}}``.
        ssh_args: extra arguments for every ssh call (e.g. ``["-F", cfg]``); they
            come first, so they override xqute's own ``-o`` options.
        connect_timeout: seconds ssh may take to connect (``ConnectTimeout``).
        command_timeout: seconds any one ssh call may take.
        lost_after: seconds a host may fail to answer before the jobs on it that
            their files do not account for are failed as lost.
        retry_host_after: seconds before a host that failed is tried again.
        liveness_interval: seconds between two checks of the same host for jobs
            their files leave open (the files are read every round).
        cgroup_dir: where, on every host (a host's own ``cgroup_dir`` option
            wins), its user may make memory cgroups: a folder of the memory
            cgroup hierarchy (v1, or v2 with the memory controller delegated);
            None (default): looked for on each host; False: no cgroups (memory
            limits best effort, peak memory not recorded).
        **kwargs: the Scheduler's options. Host-key checking is left as the
            user's ssh configuration has it (on, by default).
    """

    name = "ssh"
    required_binaries = ("ssh",)
    # A status round reads the jobs' meta files (one small read per running job)
    # and only every ``liveness_interval`` asks the hosts, so rounds can be short:
    # a job's end is seen at most half a second late.
    default_poll_interval = 0.2
    default_poll_interval_max = 0.5

    def __init__(
        self,
        *args: Any,
        ssh: str = "ssh",
        servers: Sequence[str] | Mapping[str, Mapping[str, Any] | None] | None = None,
        ssh_args: Sequence[str] | None = None,
        connect_timeout: float = 10,
        command_timeout: float = 60,
        lost_after: float = 60,
        retry_host_after: float = 10,
        liveness_interval: float = 5,
        cgroup_dir: str | bool | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault(
            "poll_interval_max",
            max(self.default_poll_interval_max, float(kwargs.get("poll_interval", 0))),
        )
        super().__init__(*args, **kwargs)
        self.ssh = ssh
        # at construction (not at the first job, as for other backends): a
        # documented difference from 2.x, where every job failed instead
        self.check_required_binaries()
        if ssh_args is None:
            ssh_args = ()
        elif isinstance(ssh_args, str) or not all(isinstance(a, str) for a in ssh_args):
            raise ValueError(f"ssh_args must be a list of strings, got {ssh_args!r}")
        for option, value in (
            ("connect_timeout", connect_timeout),
            ("command_timeout", command_timeout),
            ("lost_after", lost_after),
            ("retry_host_after", retry_host_after),
            ("liveness_interval", liveness_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{option} must be a number of seconds > 0, got {value!r}")
        if self.config:
            logger.warning(
                "The ssh scheduler has no directives; ignoring option(s): %s",
                ", ".join(sorted(self.config)),
            )

        self.ssh = ssh
        self.lost_after = float(lost_after)
        self.retry_host_after = float(retry_host_after)
        self.liveness_interval = float(liveness_interval)
        self.servers: dict[str, SshHost] = {}
        if cgroup_dir is not None and cgroup_dir is not False and not (
            isinstance(cgroup_dir, (str, os.PathLike)) and os.fspath(cgroup_dir).startswith("/")
        ):
            raise ValueError(
                "cgroup_dir must be an absolute path on the hosts, None (look for one) "
                f"or False (none), got {cgroup_dir!r}"
            )
        for index, (label, options) in enumerate(_normalize_servers(servers).items()):
            options = dict(host_options(label, options))
            options.setdefault("cgroup_dir", cgroup_dir)
            self.servers[label] = SshHost(
                label,
                ssh=ssh,
                index=index,
                ssh_args=ssh_args,
                socket_dir=self._private_socket_dir,
                connect_timeout=float(connect_timeout),
                command_timeout=float(command_timeout),
                **options,
            )
        self._socket_dir: str | None = None
        # job -> label of the host it was placed on (pruned as jobs end)
        self._placed: dict[Job, str] = {}
        # host label -> launches waiting for the host's next launch call
        self._collecting: dict[str, list[tuple[str, asyncio.Future]]] = {}
        self._flushes: set[asyncio.Task] = set()
        self._turn = 0
        # job -> label of the host it was lost with, for its usage record
        self._lost_on: dict[Job, str] = {}
        # jobs told that every host was excluded (said once each)
        self._said_all_excluded: set[int] = set()
        # memory cgroups on the hosts: this manager's folder of them there
        # (the same name on every host), a count making each trial's unique,
        # and job -> (host label, cgroup) of trials still to be removed
        self._cgroup_parent = f"xqute-ssh-{os.getpid()}-{os.urandom(3).hex()}"
        self._cgroup_seq = 0
        self._cgroup_of: dict[Job, tuple[str, str]] = {}
        # host label -> cgroups of earlier trials of jobs submitted again
        self._cgroups_done: dict[str, list[str]] = {}
        # hosts where this manager made cgroups (their folders go at close)
        self._cgroup_hosts: dict[str, str] = {}

    # ----------------------------------------------------------------- set-up
    @property
    def socket_dir(self) -> str | None:
        """The private directory holding the control sockets (while running)."""
        return self._socket_dir

    def _private_socket_dir(self) -> str:
        """The private folder for control sockets, made on the first connection."""
        if self._socket_dir is None:
            # mode 0700: nobody else may use our connections
            self._socket_dir = tempfile.mkdtemp(prefix="xqute-ssh-")
        return self._socket_dir

    async def close(self) -> None:
        """Remove the memory cgroups of ended trials and this manager's folders
        of them on the hosts (one ssh call per host that has any; the cgroups
        of jobs still running stay), then end every master connection and
        remove the private socket directory."""
        await self._remove_cgroups()
        await asyncio.gather(
            *(host.close() for host in self.servers.values()), return_exceptions=True
        )
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    async def _remove_cgroups(self) -> None:
        labels = (
            set(self._cgroup_hosts)
            | set(self._cgroups_done)
            | {label for label, _ in self._cgroup_of.values()}
        )

        async def remove_on(label: str) -> None:
            host = self.servers.get(label)
            paths = self._ended_cgroups(label)
            parent = self._cgroup_hosts.pop(label, None)
            if host is None or (not paths and parent is None) or (host.failing and not host.connected):
                return
            try:
                await host.run(
                    REMOTE_SHELL,
                    input=cgroup_cleanup_script(paths, [parent] if parent else []),
                    timeout=min(host.command_timeout, 30),
                )
            except HostUnavailable as exc:
                logger.warning("Could not remove memory cgroups on %s: %s", label, exc)

        await asyncio.gather(*(remove_on(label) for label in labels), return_exceptions=True)

    # ----------------------------------------------------------------- placement
    def host_loads(self) -> dict[str, int]:
        """How many of our jobs each host holds now (submitted or running)."""
        loads = {label: 0 for label in self.servers}
        for job, label in list(self._placed.items()):
            if job.status in _HOLDING:
                loads[label] += 1
            elif JobStatus.is_final(job.status):
                del self._placed[job]
        return loads

    def _placement_order(self, exclude: Sequence[str] = ()) -> list[SshHost]:
        """Hosts to try for the next job: the least loaded healthy ones first
        (ties taken in turn); a failing host only once its retry time has come,
        and, when no host is healthy, the one that failed longest ago. Hosts
        whose label is in ``exclude`` (a retry after a node failure) are left
        out, unless that leaves none."""
        hosts = [host for host in self.servers.values() if host.label not in exclude]
        if not hosts:
            hosts = list(self.servers.values())
        loads = self.host_loads()
        now = time.monotonic()
        turn = self._turn % len(hosts)
        self._turn += 1
        ready = [
            (loads[host.label], (i - turn) % len(hosts), host)
            for i, host in enumerate(hosts)
            if not host.failing or now - host.last_attempt >= self.retry_host_after
        ]
        if ready:
            return [host for *_, host in sorted(ready, key=lambda item: item[:2])]
        return sorted(hosts, key=lambda host: host.last_attempt)[:1]

    # ----------------------------------------------------------------- launching
    async def _launch(
        self, host: SshHost, script: str, cgroup: tuple[str, int] | None = None
    ) -> tuple[int, str | None]:
        """Start the wrapper ``script`` on ``host``; its pid, and the memory
        cgroup made for it there (``cgroup``: its name and limit in bytes, 0
        for none, when it wants one; None when none was made).

        Launches asked for together (a submission batch) share one ssh call per
        host: the first opens a short window, the ones arriving in it join.
        Raises HostUnavailable, or SubmissionError when the host ran the launcher
        but could not start this job.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        batch = self._collecting.get(host.label)
        if batch is None:
            batch = self._collecting[host.label] = []
            task = loop.create_task(self._flush_launches(host, batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        batch.append((script, cgroup if host.cgroup_dir is not False else None, future))
        return await future

    def _ended_cgroups(self, label: str) -> list[str]:
        """The cgroups on host ``label`` of trials that have ended (taken off
        the list: the caller removes them)."""
        paths = self._cgroups_done.pop(label, [])
        for job, (where, path) in list(self._cgroup_of.items()):
            if where == label and JobStatus.is_final(job.status):
                del self._cgroup_of[job]
                paths.append(path)
        return paths

    async def _flush_launches(self, host: SshHost, batch: list) -> None:
        await asyncio.sleep(_LAUNCH_WINDOW)
        if self._collecting.get(host.label) is batch:
            del self._collecting[host.label]
        try:
            here: str | None = os.getcwd()
        except OSError:  # the manager's folder was removed under it
            here = None
        remove = self._ended_cgroups(host.label)
        cgroup_dir = host.cgroup_dir if isinstance(host.cgroup_dir, str) else None
        cgroups = [cgroup for _, cgroup, _ in batch]
        if host.no_cgroup_reason is not None:
            # the host said it has none: not looked for again in this run
            self._say_no_cgroups(host, cgroups)
            cgroups = []
        text = launch_script(
            [script for script, _, _ in batch],
            defaults.JOBCMD_WRAPPER_LANG,
            here,
            cgroups=cgroups,
            cgroup_parent=self._cgroup_parent,
            cgroup_dir=cgroup_dir,
            remove=remove,
        )
        try:
            result = await host.run(REMOTE_SHELL, input=text)
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # HostUnavailable, or a bug: the submitters hear of it
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        pids, errors = parse_launch_output(result.stdout)
        made, why = parse_cgroup_output(result.stdout)
        if made:
            self._cgroup_hosts[host.label] = made[min(made)].rsplit("/", 1)[0]
        if why is not None and host.no_cgroup_reason is None:
            host.no_cgroup_reason = why
            self._say_no_cgroups(host, cgroups)
        for k, (_, _, future) in enumerate(batch):
            if future.done():
                continue
            if k in pids:
                future.set_result((pids[k], made.get(k)))
                continue
            said = errors.get(k) or (result.stderr or result.stdout).strip() or "no output"
            future.set_exception(SubmissionError(
                f"host {host.label} could not start the job (launcher exit {result.rc}): {said}"
            ))

    # ----------------------------------------------------------------- memory
    @staticmethod
    def _say_no_cgroups(host: SshHost, cgroups: Sequence[tuple[str, int] | None]) -> None:
        """Say why ``host`` makes no memory cgroups: a warning the first time a
        job there asks for memory, else (peak memory only) once for debugging."""
        limited = any(cgroup and cgroup[1] for cgroup in cgroups)
        if limited and not host.no_cgroup_warned:
            host.no_cgroup_warned = True
            logger.warning(
                "ssh host %s: no memory cgroup can be made there, so memory limits are "
                "best effort (ulimit -S -d on each command) and peak memory is not "
                "recorded: %s", host.label, host.no_cgroup_reason,
            )
        elif not limited and not host.no_cgroup_said:
            host.no_cgroup_said = True
            logger.debug(
                "ssh host %s: no memory cgroup can be made there (peak memory is not "
                "recorded): %s", host.label, host.no_cgroup_reason,
            )

    def _memory_asked(self, job: Job) -> int | None:
        asked = getattr(job, "resources", None)
        return (asked.memory_mb or None) if asked else None

    def _cgroup_request(self, job: Job) -> tuple[str, int] | None:
        """The memory cgroup a trial of ``job`` asks its host for: its name
        and limit in bytes (0: none, a cgroup for the peak only, when usage is
        recorded); None when it wants none."""
        memory_mb = self._memory_asked(job)
        if not memory_mb and not self.usage:
            return None
        self._cgroup_seq += 1
        return f"job{job.index}.{self._cgroup_seq}", (memory_mb or 0) * 1048576

    def wrap_job_script(self, job: Job) -> str:
        """The base's wrapper, with the memory cgroup the launcher made for
        the trial on its host (``$_xq_cg`` in its environment, if any) joined
        as its first line, with a builtin, before anything runs or allocates;
        a job asking for memory whose host gave it no cgroup gets ``ulimit -S
        -d`` on its command's shell instead (best effort)."""
        text = super().wrap_job_script(job)
        memory_mb = self._memory_asked(job)
        shebang, rest = text.split("\n", 1)
        join = (
            "# the memory cgroup the launcher made for this trial on this host, if any:\n"
            "# joined with a builtin before anything runs or allocates\n"
            "_xq_memcg=${_xq_cg:-} _xq_peakf=${_xq_cgpeak:-} _xq_nolimit=\n"
            "unset _xq_cg _xq_cgpeak\n"
            'if [ -n "$_xq_memcg" ]; then\n'
            '    { echo $$ >"$_xq_memcg/cgroup.procs"; } 2>/dev/null '
            "|| { _xq_nolimit=$_xq_memcg; _xq_memcg= _xq_peakf=; }\n"
            "fi\n"
            f"_xq_memkb={memory_mb * 1024 if memory_mb else ''}"
        )
        return f"{shebang}\n{join}\n{rest}"

    def command_shell_setup(self, job: Job) -> str:
        """Where the wrapper could not join a cgroup: the best-effort memory
        limit (``ulimit -d``), for the command's shell only."""
        memory_mb = self._memory_asked(job)
        if not memory_mb:
            return ""
        return '[ -n "$_xq_memcg" ] || ulimit -S -d "$_xq_memkb" 2>/dev/null'

    @property
    def jobcmd_wrapper_init(self) -> str:
        """The base's; then: in the job's stderr, whether the wrapper could not
        join its memory cgroup; the peak read from that cgroup (a builtin);
        and, on the way out, before the wrapper records its return code, the
        cgroup's OOM counters (or the best-effort limit) written to
        ``job.memory`` for ``exit_cause``."""
        code = r"""[ -z "$_xq_nolimit" ] || [ -z "$_xq_memkb" ] || echo "xqute: could not join the memory cgroup $_xq_nolimit: the memory limit is best effort (ulimit -d)" >&2
_xq_peak() { local p; [ -n "$_xq_peakf" ] && read -r p <"$_xq_peakf" && echo "peak $p"; }
_xq_memnote() {
    local r=$? f k v n=
    if [ -n "$_xq_memcg" ]; then
        for f in memory.events memory.oom_control; do
            [ -r "$_xq_memcg/$f" ] || continue
            while read -r k v; do [ "$k" = oom_kill ] && n="oom_kill $v"; done <"$_xq_memcg/$f"
        done
        [ -r "$_xq_memcg/memory.failcnt" ] && read -r v <"$_xq_memcg/memory.failcnt" && n="$n failcnt $v"
        # "cgroup <path>", then "oom_kill <n>" and "failcnt <n>" where the kernel has them
        printf '%s %s\n' cgroup "$_xq_memcg" $n >"$_xq_meta/job.memory"
    elif [ -n "$_xq_memkb" ]; then
        printf 'ulimit %s\n' "$_xq_memkb" >"$_xq_meta/job.memory"
    fi
    return "$r"
} 2>/dev/null
trap '_xq_memnote; _xq_finish' EXIT"""
        base = super().jobcmd_wrapper_init
        # after the base's (2.x clients expect it to start with the cd)
        return f"{base}\n{code}" if base else code

    async def exit_cause(self, job: Job, rc: int) -> str:
        """The base's reading of ``rc``; a failure whose cgroup counted an OOM
        kill (v2 ``memory.events``, v1 ``memory.oom_control``; on a v1 kernel
        without that counter, a SIGKILL after ``memory.failcnt`` counted the
        limit being hit) is ``oom``; under the best-effort limit, a failure
        whose stderr ends with an allocation error is ``oom`` too."""
        cause = await super().exit_cause(job, rc)
        if cause in ("ok", "timeout"):
            return cause
        note = await read_meta(job.metadir / MEMORY_NOTE) or ""
        counts: dict[str, int] = {}
        kind = ""
        for line in note.splitlines():
            words = line.split()
            if words and words[0] in ("cgroup", "ulimit"):
                kind = words[0]
            elif len(words) == 2 and words[1].isdigit():
                counts[words[0]] = int(words[1])
        if kind == "cgroup":
            if counts.get("oom_kill", 0) > 0:
                return "oom"
            if "oom_kill" not in counts and rc == 137 and counts.get("failcnt", 0) > 0:
                return "oom"
        elif kind == "ulimit" and _allocation_failed(job):
            return "oom"
        return cause

    # ----------------------------------------------------------------- the interface
    async def submit_job(self, job: Job) -> str:
        """Start ``job`` detached on the least loaded host; returns ``pid@host``.

        A host that cannot be reached is skipped for the next one; when none can
        start the job, SubmissionError names each host and ssh's error.
        """
        script = str((await self.wrapped_job_script(job)).mounted)
        # the last trial's note must not speak for this one
        try:
            os.unlink(job.metadir / MEMORY_NOTE)
        except (OSError, TypeError):
            pass
        cgroup = self._cgroup_request(job)
        earlier = self._cgroup_of.pop(job, None)
        if earlier is not None:  # the last trial's: it has ended
            self._cgroups_done.setdefault(earlier[0], []).append(earlier[1])
        errors: list[str] = []
        permanent = True
        exclude = tuple(getattr(getattr(job, "resources", None), "exclude_nodes", ()) or ())
        if exclude and set(self.servers) <= set(exclude) and job.index not in self._said_all_excluded:
            self._said_all_excluded.add(job.index)
            logger.warning(
                "Job %s: every ssh host (%s) is excluded after node failures; trying them all again",
                job.index, ", ".join(self.servers),
            )
        for host in self._placement_order(exclude):
            self._placed[job] = host.label  # counts against the host from now on
            try:
                pid, cgroup_path = await self._launch(host, script, cgroup)
            except HostUnavailable as exc:
                host.mark_failed(exc)
                errors.append(str(exc))
                permanent = permanent and exc.permanent
                continue
            except SubmissionError:
                host.mark_ok()
                self._placed.pop(job, None)
                raise
            host.mark_ok()
            if cgroup_path is not None:
                self._cgroup_of[job] = (host.label, cgroup_path)
            logger.debug("Job %s started on %s as pid %s", job.index, host.label, pid)
            return f"{pid}@{host.label}"
        self._placed.pop(job, None)
        raise SubmissionError(
            "no ssh host could start the job: " + "; ".join(errors), transient=not permanent
        )

    def _parse_jid(self, job: Job) -> tuple[int, SshHost] | str:
        """(pid, host) of a job, or why its id cannot be used."""
        jid = job.jid or ""
        pid_text, sep, label = jid.strip().partition("@")
        # not str.isdigit(): "²@host" (a jid file holding anything) passed it,
        # then int() raised out of the status round
        pid = parse_number(pid_text)
        if not sep or not pid:
            return f"job {job.index} has no usable ssh job id ({jid!r}; expected pid@host)"
        host = self.servers.get(label)
        if host is None:
            return f"job {job.index} ran on host {label!r}, which is not among this scheduler's servers"
        return pid, host

    def _group_by_host(
        self, jobs: Sequence[Job], answers: dict[Job, JobQuery]
    ) -> dict[SshHost, list[tuple[Job, int]]]:
        groups: dict[SshHost, list[tuple[Job, int]]] = {}
        for job in jobs:
            parsed = self._parse_jid(job)
            if isinstance(parsed, str):
                answers[job] = JobQuery(JobQuery.ENDED, parsed)
                continue
            pid, host = parsed
            groups.setdefault(host, []).append((job, pid))
        return groups

    async def query_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobQuery]:
        """Which of ``jobs`` still run: one ``ps`` over ssh per host, all hosts at once."""
        for job in jobs:
            if job.jid is None:
                await job.get_jid()
        answers: dict[Job, JobQuery] = {}
        groups = self._group_by_host(jobs, answers)
        results = await asyncio.gather(
            *(self._ask_host(host, entries) for host, entries in groups.items())
        )
        for result in results:
            answers.update(result)
        return answers

    async def _ask_host(
        self, host: SshHost, entries: list[tuple[Job, int]]
    ) -> dict[Job, JobQuery]:
        now = time.monotonic()
        if host.failing and now - host.last_attempt < self.retry_host_after:
            return self._lost_or_unknown(host, entries)
        # rate limit, for the jobs we placed ourselves; a job an earlier manager
        # left running is asked about at once (it is being adopted or not)
        if now - host.last_liveness_at < self.liveness_interval and all(
            job in self._placed for job, _ in entries
        ):
            return {}
        host.last_liveness_at = now
        try:
            result = await host.run(alive_command(pid for _, pid in entries))
        except HostUnavailable as exc:
            host.mark_failed(exc)
            return self._lost_or_unknown(host, entries)
        host.mark_ok()
        if result.rc not in (0, 1) or (result.rc == 1 and result.stderr.strip()):
            logger.warning(
                "ps on ssh host %s failed (exit %s): %s",
                host.label, result.rc, result.stderr.strip(),
            )
            return {}
        alive = parse_alive_output(result.stdout)
        answers: dict[Job, JobQuery] = {}
        now = time.monotonic()
        for job, pid in entries:
            args = alive.get(pid)
            if args is not None and self._runs_wrapper(job, args):
                answers[job] = JobQuery(JobQuery.RUNNING)
                # a job adopted from an earlier manager counts against its host too
                self._placed.setdefault(job, host.label)
            elif args is not None and job.submitted_at and now - job.submitted_at < _LAUNCH_SETTLE:
                continue  # not exec'd yet: ask again next round
            else:
                answers[job] = JobQuery(
                    JobQuery.ENDED,
                    f"process {pid} of job {job.index} is no longer running on host {host.label}",
                )
        return answers

    def _runs_wrapper(self, job: Job, args: str) -> bool:
        """Whether a process's command line is this job's wrapper (pids are reused)."""
        script = str((job.metadir / self.wrapped_script_name).mounted)
        if script in args:
            return True
        # ps may show unusual characters of the path differently; the tail will do
        return f"/{job.index}/{self.wrapped_script_name}" in args

    def _lost_or_unknown(
        self, host: SshHost, entries: list[tuple[Job, int]]
    ) -> dict[Job, JobQuery]:
        """A host that does not answer: its jobs are unknown, then lost."""
        silent = host.failing_for()
        if silent < self.lost_after:
            return {}
        reason = (
            f"host {host.label} has not answered for {silent:.0f} s "
            f"({host.last_error}); the job is taken as lost"
        )
        for job, _ in entries:
            self._lost_on[job] = host.label
        return {job: JobQuery(JobQuery.ENDED, reason, cause="node_fail") for job, _ in entries}

    def job_usage(self, job: Job) -> dict[str, Any]:
        """For a job lost with its host: that host's label (the wrapper
        recorded nothing), so that a retry after ``node_fail`` keeps away from
        it. Nothing otherwise: the wrapper's own figures stand."""
        label = self._lost_on.pop(job, None)
        if label is None:
            return {}
        return {"host": label, "sources": {"host": "ssh"}}

    async def kill_jobs(self, jobs: Sequence[Job]) -> None:
        """SIGTERM each job's process group on its host, SIGKILL what is left after
        the grace period: one ssh call per host, all hosts at once."""
        answers: dict[Job, JobQuery] = {}
        groups = self._group_by_host(jobs, answers)

        async def kill_on(host: SshHost, entries: list[tuple[Job, int]]) -> None:
            targets = [
                (pid, str((job.metadir / self.wrapped_script_name).mounted))
                for job, pid in entries
            ]
            try:
                result = await host.run(
                    REMOTE_SHELL,
                    input=kill_script(targets, defaults.KILL_GRACE),
                    timeout=defaults.KILL_GRACE + host.command_timeout,
                )
            except HostUnavailable as exc:
                host.mark_failed(exc)
                logger.error(
                    "Could not kill %s job(s) on %s: %s", len(entries), host.label, exc
                )
                return
            if result.rc != 0:
                logger.error(
                    "Killing jobs on %s failed (exit %s): %s",
                    host.label, result.rc, result.stderr.strip(),
                )

        await asyncio.gather(*(kill_on(host, entries) for host, entries in groups.items()))


def _normalize_servers(servers: Any) -> dict[str, Mapping[str, Any] | None]:
    """``servers`` as ``{label: options}``, refusing what ssh could not use."""
    if not servers:
        raise ValueError(
            "The ssh scheduler needs servers: a list of host names, or a mapping "
            "{host: {port, user, keyfile, ctrl_persist, ctrl_dir}}"
        )
    if isinstance(servers, Mapping):
        return {str(label): options for label, options in servers.items()}
    if isinstance(servers, str) or not isinstance(servers, (list, tuple)):
        raise ValueError(
            f"servers must be a list of host names or a mapping, got {servers!r}"
        )
    normalized: dict[str, Mapping[str, Any] | None] = {}
    for label in servers:
        if not isinstance(label, str):
            raise ValueError(f"ssh server names must be strings, got {label!r}")
        if label in normalized:
            raise ValueError(f"ssh server {label!r} is listed twice")
        normalized[label] = None
    return normalized
