"""Run jobs on Google Cloud Batch through the ``gcloud`` CLI.

A job submitted alone is one Batch job with one task; a burst of jobs (the
base class's ``submit_burst``) is one Batch job whose task group has a task per
job (``taskCount``) and runs at most ``parallelism`` of them at once (see
"Arrays" below). A job's wrapper lives in the ``gs://`` workdir, which Batch
mounts into the VM (a GCS volume, at ``mounted_workdir``,
``/mnt/disks/<defaults.DEFAULT_WORKDIR_NAME>`` by default), so the wrapper
writes its meta files there as plain files and the manager reads them from the
bucket.

``config`` is the job JSON itself, kept live: 2.x clients (pipen) append volumes
and labels to it after ``post_init``, and each submission copies it as it is then.

Economy of calls, since a ``gcloud`` call costs one to three seconds of CPU:

- A job's state comes first from its files: the base class lists the workdir
  prefix once per round and reads only the files of jobs that ended.
- Batch is asked about the jobs the files leave open in **one**
  ``gcloud batch jobs list`` call, filtered by a label unique to the workdir
  (``xqute-run``). The base class paces these calls (``query_interval``, less
  often while nothing changes) and gives a job Batch calls ended ``end_grace``
  seconds for its files to show the end. Never a ``describe`` per job.
- FAILED, CANCELLED and deleted jobs, and jobs Batch no longer knows, are
  failed with rc -3 and the state (with Batch's last event) in their stderr
  file; so is a job still not started after ``start_timeout`` seconds.
- Quota and deadline errors on submit are retried with backoff by the base
  class. A submit whose reply was lost (a timeout) may have created the job:
  the base class asks ``find_submitted`` before trying again. A job name still
  in use by an old job is freed by deleting that job and waiting for its
  deletion to finish.
- Kill: ``gcloud batch jobs cancel`` of every job (a few at a time), falling
  back to ``delete`` when a job cannot be cancelled.

Resources (the base option ``resources``), mapped onto the job JSON of each
submission (a copy of ``config``; an array's from its first member, since the
members of one array share one request):

- ``cpus`` -> ``taskGroups[0].taskSpec.computeResource.cpuMilli`` (cpus x 1000);
- ``memory`` -> ``taskSpec.computeResource.memoryMib``;
- ``time`` -> ``taskSpec.maxRunDuration`` (``"<seconds>s"``), which Batch
  enforces (``time_enforced_by_scheduler``: the wrapper sets no timeout for
  it): a task over it is stopped with exit code 50005, and its job ends with
  the cause ``timeout``, which the retry policy acts on;
- ``gpus`` -> ``allocationPolicy.instances[0].policy.accelerators[0]``:
  ``{"type": gpu_type, "count": N}`` and ``instances[0].installGpuDrivers``
  (true unless given). The GPU type comes from the ``gpu_type`` option, or from
  an accelerator already in ``config`` that has a type and no count; with
  neither, ``post_init`` refuses the options. An instance template in
  ``instances[0]`` says the VM itself: no accelerator is added.

A value already in the live ``config`` (``computeResource.cpuMilli``,
``memoryMib``, ``maxRunDuration``, an accelerator's ``count``) wins over
``resources``, with one warning (``raw_option_wins``).

Usage and causes (see ``job_usage`` and ``exit_cause``): Batch's figures
come from the lists the status rounds make anyway, never a call per job: a
job's ``status.runDuration`` (``wall_s``), an array member's task events
(RUNNING to its end: ``wall_s``; the VM they name: ``host``). Batch's reserved
exit codes in a failed job's (or task's) event are the cause: 50005
``timeout``, 50001 ``preempted``, 50002/50003/50004/50006 ``node_fail``.

Arrays (on unless the ``array`` option is False):

- ``submit_array`` writes each member's wrapper, then a dispatch script,
  ``<workdir>/.arrays/<name>/dispatch.sh``, which execs the wrapper of member
  ``$BATCH_TASK_INDEX`` (and the Batch JSON beside it, ``job.json``), and submits
  ONE Batch job named after ``array_name`` (made a Batch id as job names are):
  the JSON a single job gets, its runnable running the dispatch script, with
  ``taskCount`` = the members and ``parallelism`` = the throttle. The script is
  a file, not inlined in the JSON: the runnable (script or container, with its
  ``{script}`` placeholders) is built exactly as for a single job, and the job
  definition stays small whatever the size (Batch refuses one over 1 MB).
- A member's job id is ``<Batch job name>:<task index>`` (``:`` is never in a
  Batch job id, so a plain job's id, the bare name, is told apart). The ids
  are written to the members' jid files before the submission, so a manager
  killed after Batch took the array leaves them for a rerun to follow.
- Status: the ``jobs list`` of each round gives the array job's state; only an
  array job that is RUNNING is asked for its tasks' states, one ``gcloud batch
  tasks list`` per array job per round (never per member).
- Kill: Batch cannot stop one task. When every live member of an array job
  goes, the Batch job is cancelled once. A member killed while others live is
  recorded killed (the base class); its task is not touched: not started yet,
  it will not start (the dispatch script finds a ``killed.<task>`` marker in
  the array's folder), but one already running runs on to its end.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import getpass
import hashlib
import json
import re
import shlex
import time
from pathlib import PurePosixPath
from typing import Any, Sequence

from diot import Diot
from panpath import GSPath

from .. import defaults
from ..defaults import JobStatus
from ..job import Job
from ..path import SpecPath, write_meta
from ..resources import Resources
from ..scheduler import JobQuery, Scheduler, SubmissionError
from ..utils import logger, one_line, run_command, sanitize_mounts, shell_quote

# Batch job ids: 1-63 characters, lowercase letters, digits and hyphens, starting
# with a letter and not ending with a hyphen.
JOB_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
# What a job name may not hold in a Batch job id (replaced by hyphens).
_BATCH_BAD_NAME_CHARS = re.compile(r"[^a-z0-9-]")
# Label keys and values (https://cloud.google.com/batch/docs/organize-resources-using-labels)
_LABEL_VALUE_BAD_CHARS = re.compile(r"[^a-z0-9_-]")

PENDING_STATES = frozenset({"STATE_UNSPECIFIED", "QUEUED", "SCHEDULED"})
RUNNING_STATES = frozenset({"RUNNING"})
ENDED_STATES = frozenset(
    {"SUCCEEDED", "FAILED", "CANCELLED", "CANCELLATION_IN_PROGRESS", "DELETION_IN_PROGRESS"}
)
# Submit errors worth retrying: quotas and rate limits empty, deadlines and
# unavailability pass.
_TRANSIENT_SUBMIT_RE = re.compile(
    r"RESOURCE_EXHAUSTED|DEADLINE_EXCEEDED|UNAVAILABLE|ABORTED|quota|rate limit"
    r"|too many requests|timed out|\b429\b|\b503\b|\b504\b|connection reset|try again",
    re.IGNORECASE,
)
# An attempt whose outcome is unknown: the job may have been created anyway.
_AMBIGUOUS_SUBMIT_RE = re.compile(r"DEADLINE_EXCEEDED|timed out|\b504\b|connection reset", re.I)
# Batch's reserved exit codes
# (https://cloud.google.com/batch/docs/troubleshooting#reserved-exit-codes):
# a task that Batch itself ended, and how xqute names that end
RESERVED_EXIT_CAUSES = {
    50001: "preempted",  # the Spot VM was preempted
    50002: "node_fail",  # the VM stopped reporting to Batch (VM reporting timeout)
    50003: "node_fail",  # the VM rebooted while the task ran
    50004: "node_fail",  # the task and its VM stopped responding
    50005: "timeout",  # the task ran past its maxRunDuration (or a runnable's timeout)
    50006: "node_fail",  # the VM was recreated while the task ran
}
# "... with exit code 50005." in a task event (and so in the event of the job
# that failed with it); the last one counts
_EXIT_CODE_RE = re.compile(r"\bexit code (-?[0-9]+)\b")
# "... on zones/us-central1-a/instances/8565413539485838498 ...": the task's VM
_INSTANCE_RE = re.compile(r"\bon zones/[^/\s]+/instances/([A-Za-z0-9_.-]*[A-Za-z0-9_-])")
# A failed job's event naming the task it failed by: "Specifically, task with
# index 3 failed due to the following task event: ..."
_FAILED_TASK_RE = re.compile(r"\btask with index ([0-9]+) failed\b")
# States after which Batch's figures for a job (or task) are final.
_FINAL_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
_FINAL_TASK_STATES = frozenset({"SUCCEEDED", "FAILED"})
# Return codes of a wrapper stopped by a signal from outside: Batch may have
# stopped the task (its maxRunDuration) and can say so
_SIGNALLED_RCS = frozenset({137, 143})
# Seconds between two checks while waiting for an old job's deletion.
DELETION_CHECK_INTERVAL = 2.0
# How many gcloud processes may run at once when killing many jobs.
KILL_CONCURRENCY = 4
# Seconds a job just submitted may be missing from `gcloud batch jobs list`
# (lists lag behind creation) before it is taken as gone.
LIST_LAG = 10.0

# Task states (gcloud batch tasks list), as JobQuery sees them.
TASK_PENDING_STATES = frozenset({"STATE_UNSPECIFIED", "PENDING", "ASSIGNED"})
TASK_RUNNING_STATES = frozenset({"RUNNING"})
TASK_ENDED_STATES = frozenset({"SUCCEEDED", "FAILED", "UNEXECUTED"})
# Batch's system limits (https://cloud.google.com/batch/quotas): tasks per task
# group, and tasks running at once in one job.
MAX_TASKS_PER_GROUP = 100_000
MAX_PARALLEL_TASKS = 5_000
# The most members one array job gets by default: every task's bash parses the
# whole dispatch script, and each status round lists all tasks of a running
# array job, so a smaller array is cheaper than Batch's 100,000.
DEFAULT_ARRAY_LIMIT = 10_000
# The folder of the workdir that holds each array job's dispatch script and JSON.
ARRAYS_FOLDER = ".arrays"
# How many files of an array (wrappers, jid files) are written at once.
WRITE_CONCURRENCY = 16


def member_jid(name: str, task: int) -> str:
    """The job id of task ``task`` of the array job ``name``: ``<name>:<task>``."""
    return f"{name}:{task}"


def parse_member_jid(jid: Any) -> tuple[str, int] | None:
    """(Batch job name, task index) of an array member's job id; None for the
    id of a job submitted alone (a bare Batch job name)."""
    name, sep, task = str(jid).rpartition(":")
    if not sep or not name or not task.isdigit():
        return None
    return name, int(task)


def _event_code(text: str) -> int | None:
    """The last ``exit code N`` in an event's description."""
    codes = _EXIT_CODE_RE.findall(text or "")
    return int(codes[-1]) if codes else None


def _reserved_cause(text: str) -> str:
    """The cause a reserved exit code in ``text`` stands for ("" if none)."""
    code = _event_code(text)
    return RESERVED_EXIT_CAUSES.get(code, "") if code is not None else ""


_RFC3339_RE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", re.ASCII
)


def _event_time(text: Any) -> float | None:
    """Seconds since the epoch of an ``eventTime`` (RFC 3339, up to nine
    fractional digits); None when it is not one."""
    match = _RFC3339_RE.match(str(text or ""))
    if not match:
        return None
    base, fraction, zone = match.groups()
    try:
        moment = datetime.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def _duration_seconds(text: Any) -> float | None:
    """Seconds of a protobuf Duration in JSON (``"12.5s"``); None otherwise."""
    text = str(text or "")
    if not text.endswith("s"):
        return None
    try:
        seconds = float(text[:-1])
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _events_of(status: dict) -> list[dict]:
    events = status.get("statusEvents") or []
    return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []


def _figures_from_task_events(events: list[dict]) -> dict[str, Any]:
    """``wall_s`` (from the task's move to RUNNING to its end), ``host`` (the
    VM its events name) and ``exit_code`` from one task's ``statusEvents``."""
    started = ended = None
    host = None
    code = None
    for event in events:
        state = event.get("taskState")
        description = str(event.get("description", ""))
        found = _INSTANCE_RE.search(description)
        if found:
            host = found.group(1)
        if state == "RUNNING" and started is None:
            started = _event_time(event.get("eventTime"))
        elif state in _FINAL_TASK_STATES:
            ended = _event_time(event.get("eventTime"))
            execution = event.get("taskExecution") or {}
            if isinstance(execution, dict) and isinstance(execution.get("exitCode"), int):
                code = execution["exitCode"]
            elif _event_code(description) is not None:
                code = _event_code(description)
    figures: dict[str, Any] = {"sources": {}}
    if started is not None and ended is not None and ended >= started:
        figures["wall_s"] = round(ended - started, 3)
        figures["sources"]["wall_s"] = "batch_events"
    if host:
        figures["host"] = host
        figures["sources"]["host"] = "batch_events"
    if code is not None:
        figures["exit_code"] = code
    return figures


def _tasks_from_list(listed: Any) -> dict[int, str] | None:
    """``{task index: state}`` from ``gcloud batch tasks list``'s JSON; None when
    it is not a list of tasks."""
    if not isinstance(listed, list):
        return None
    states: dict[int, str] = {}
    for item in listed:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        index = item["name"].rsplit("/", 1)[-1]
        status = item.get("status", {})
        if not index.isdigit() or not isinstance(status, dict):
            return None
        states[int(index)] = str(status.get("state", "STATE_UNSPECIFIED"))
    return states


async def _bounded(coroutines: Any, limit: int = WRITE_CONCURRENCY) -> list:
    """Await ``coroutines``, at most ``limit`` at once."""
    gate = asyncio.Semaphore(limit)

    async def run(coroutine: Any) -> Any:
        async with gate:
            return await coroutine

    return await asyncio.gather(*(run(c) for c in coroutines))


def _one_line(text: str) -> str:
    """gcloud's message: its last ``ERROR:`` line, else its last line."""
    return one_line(text, prefer="ERROR:", last=True, limit=500)


def _load_json(text: str) -> Any:
    """gcloud's JSON output; None when it is not JSON, or nests deeper than the
    parser can follow (RecursionError)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _jobs_from_list(listed: Any) -> dict[str, dict[str, Any]] | None:
    """``{name: {uid, state, event, events, run_duration}}`` from ``gcloud
    batch jobs list``'s JSON (``event``: the last event's description);
    None when it is not a list of jobs (then it says nothing about any job)."""
    if not isinstance(listed, list):
        return None
    found: dict[str, dict[str, str]] = {}
    for item in listed:
        if not isinstance(item, dict) or not isinstance(item.get("name", ""), str):
            return None
        status = item.get("status") or {}
        if not isinstance(status, dict):
            return None
        events = status.get("statusEvents") or []
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            return None
        name = item.get("name", "").rsplit("/", 1)[-1]
        found[name] = {
            "uid": str(item.get("uid", "")),
            "state": str(status.get("state", "STATE_UNSPECIFIED")),
            "event": str(events[-1].get("description", "")) if events else "",
            "events": events,
            "run_duration": status.get("runDuration"),
        }
    return found


def _label_value(text: str) -> str:
    return _LABEL_VALUE_BAD_CHARS.sub("-", text.lower())[:63]


def _given_key(mapping: dict, camel: str) -> str | None:
    """The key under which ``mapping`` gives the Batch field ``camel``: its JSON
    name (``cpuMilli``) or its proto name (``cpu_milli``); None if neither."""
    snake = re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()
    for key in (camel, snake):
        if key in mapping:
            return key
    return None


def _merge_missing(target: dict, extra: dict) -> dict:
    """Add ``extra``'s keys to ``target`` where it has none (recursively for
    dicts): what the user put in the job JSON wins over what the options say."""
    for key, value in extra.items():
        if key not in target:
            target[key] = copy.deepcopy(value)
        elif isinstance(target[key], dict) and isinstance(value, dict):
            _merge_missing(target[key], value)
    return target


class GbatchScheduler(Scheduler):
    """Submit jobs to Google Cloud Batch with ``gcloud batch jobs submit``: a
    burst as one array job (``submit_array``: a task per job, job ids
    ``<Batch job name>:<task index>``), a job alone as a Batch job of its own
    (its id the bare Batch job name).

    ``config`` is the Batch job JSON that every job is submitted with (a Diot):
    the keys not taken as options, with the options merged in, and after
    ``post_init`` the volumes in ``config["taskGroups"][0]["taskSpec"]["volumes"]``.
    ``taskSpec.runnables[0]`` is the template of the job's own runnable (its
    ``container`` holds ``image_uri``, ``entrypoint`` and ``commands``); the
    wrapper call is filled in at submission, on a copy. Changes made to
    ``config`` at any time reach the jobs submitted afterwards.

    The constructor records the options; ``post_init`` checks them (a
    ``ValueError`` for a bad one), resolves the workdir and adds the volumes.
    ``gcloud`` is first needed at submission: a missing one fails the job with a
    clear message.

    Args:
        project: the Google Cloud project (required).
        location: the Batch location, a region such as ``us-central1`` (required).
        gcloud: the ``gcloud`` binary (found on PATH by default).
        volumes / mount: GCS folders to mount in the VM, one string or a list:
            ``"gs://bucket/dir:/mnt/disks/dir"``, or ``"NAME=gs://bucket/dir"``
            which mounts it under ``/mnt/disks/NAMED_MOUNTS`` and exports
            ``$NAME`` (its path inside) to the job; a file is mounted by its
            folder and ``$NAME`` names the file.
        mount_as_cwd / volume_as_cwd: a ``gs://`` folder mounted at
            ``/mnt/disks/.cwd`` where the jobs run; a relative ``workdir`` is
            then taken inside it.
        service_account: email of the service account the VMs run as.
        network, subnetwork, no_external_ip_address: the VMs' network interface.
        machine_type, provisioning_model: the VMs' instance policy
            (``e2-standard-4``, ``SPOT``, ...).
        gpu_type: the accelerator type (``nvidia-tesla-t4``, ...) that
            ``resources``' ``gpus`` asks for (see "Resources" above).
        image_uri: run the wrapper in this container image.
        entrypoint: the container's entrypoint (default: the wrapper's bash).
        commands: the container's commands (or, without ``image_uri``, words put
            before the wrapper call). ``{lang}`` and ``{script}`` stand for
            bash and the wrapper's path in the VM. Without ``{script}``: no
            entrypoint runs ``bash <commands> <script>``; an entrypoint with
            commands gets the wrapper call appended as one ``bash script``
            string (for ``-c`` style entrypoints); an entrypoint alone gets the
            wrapper's path.
        runnables: more runnables (Batch's JSON), each with an optional
            ``order``: negative ones run before the job's, others after it.
        query_interval / query_interval_max: seconds between two
            ``gcloud batch jobs list`` calls at least (5), growing by half while
            nothing changes up to the maximum (60); paced by the base class,
            which refuses bad values at construction.
        end_grace: seconds a job's files get to show its end after Batch says it
            ended (10), since the bucket may show the last writes late (the base
            class holds it).
        start_timeout: seconds after which a job that Batch still has not
            started is given up (killed, rc -3); None (default) waits.
        deletion_timeout: seconds to wait for an old job's deletion when its
            name is needed again (600).
        command_timeout: seconds any one gcloud command may take (120).
        array_limit: the most jobs one array job holds (its ``taskCount``;
            10,000 by default, at most Batch's 100,000 tasks per task group).
            ``array: False`` (a base option) submits every job alone.
        **kwargs: the base scheduler's options (``cwd`` is a folder in the VM; a
            relative ``workdir`` is then taken inside the mounted bucket folder
            that holds it); any other key is merged into the job JSON:
            ``taskGroups``, ``allocationPolicy``, ``labels``, ``logsPolicy``, ...
            (what is given there wins over the options).
    """

    name = "gbatch"
    DEFAULT_MOUNTED_ROOT = "/mnt/disks"
    # a round lists the bucket, cheap next to a gcloud call (which the base
    # class asks for at most every query_interval seconds)
    default_poll_interval = 2.0
    default_query_interval = 5.0
    default_end_grace = 10.0
    # Batch stops a task at its maxRunDuration (resources' time): the wrapper
    # leaves that to Batch, whose exit code 50005 says the cause
    time_enforced_by_scheduler = True
    # a trial's figures (run duration, VM) come from the jobs list of a later
    # status round, or of the run's end, once Batch has them
    usage_from_scheduler = True

    def __init__(
        self,
        *args: Any,
        project: str | None = None,
        location: str | None = None,
        gcloud: str = "gcloud",
        volumes: str | Sequence[str] | None = None,
        mount: str | Sequence[str] | None = None,
        volume_as_cwd: str | None = None,
        mount_as_cwd: str | None = None,
        service_account: str | None = None,
        network: str | None = None,
        subnetwork: str | None = None,
        no_external_ip_address: bool | None = None,
        machine_type: str | None = None,
        provisioning_model: str | None = None,
        gpu_type: str | None = None,
        image_uri: str | None = None,
        entrypoint: str | None = None,
        commands: str | Sequence[str] | None = None,
        runnables: Sequence[dict] | None = None,
        start_timeout: float | None = None,
        deletion_timeout: float = 600.0,
        command_timeout: float = 120.0,
        array_limit: int = DEFAULT_ARRAY_LIMIT,
        **kwargs: Any,
    ) -> None:
        # Problems with the options are collected here and raised by post_init:
        # 2.x clients build the scheduler first and expect ValueError from there.
        problems: list[str] = []
        if not project or not isinstance(project, str):
            problems.append("The gbatch scheduler needs project= (a Google Cloud project id)")
        if not location or not isinstance(location, str):
            problems.append("The gbatch scheduler needs location= (a region, e.g. us-central1)")
        if mount and volumes:
            problems.append("Give either 'mount' or 'volumes' (they are the same option), not both")
        if mount_as_cwd and volume_as_cwd:
            problems.append(
                "Give either 'mount_as_cwd' or 'volume_as_cwd' (the same option), not both"
            )
        if command_timeout <= 0 or deletion_timeout <= 0:
            problems.append("command_timeout and deletion_timeout must be > 0")
        if start_timeout is not None and start_timeout <= 0:
            problems.append("start_timeout must be a number of seconds > 0, or None")
        if (
            not isinstance(array_limit, int)
            or isinstance(array_limit, bool)
            or not 1 <= array_limit <= MAX_TASKS_PER_GROUP
        ):
            problems.append(
                f"array_limit must be an integer from 1 to {MAX_TASKS_PER_GROUP} "
                f"(Batch's tasks per task group), got {array_limit!r}"
            )
        runnables = list(runnables or [])
        problems.extend(
            f"Each of runnables must be a dict (Batch's JSON), got {r!r}"
            for r in runnables
            if not isinstance(r, dict)
        )
        if gpu_type is not None and (not isinstance(gpu_type, str) or not gpu_type):
            problems.append(f"gpu_type must name an accelerator type (e.g. nvidia-tesla-t4), got {gpu_type!r}")
        self._problems = problems

        mount_as_cwd = mount_as_cwd or volume_as_cwd
        if not args and "workdir" not in kwargs:
            kwargs["workdir"] = defaults.DEFAULT_WORKDIR_NAME
        workdir = args[0] if args else kwargs["workdir"]
        mounted_workdir = kwargs.get("mounted_workdir")
        if mount_as_cwd and not kwargs.get("cwd"):
            kwargs["cwd"] = self._cwd_inside()
        super().__init__(*args, **kwargs)
        # What clients read (and may change before post_init, which reads them).
        self._kwargs.update(
            mount=mount or volumes,
            mount_as_cwd=mount_as_cwd,
            workdir=str(workdir),
            mounted_workdir=None if mounted_workdir is None else str(mounted_workdir),
        )

        self.project = project
        self.location = location
        self.gcloud = gcloud
        self.image_uri = image_uri
        self.entrypoint = entrypoint
        self.commands = [commands] if isinstance(commands, str) else list(commands or [])
        self.start_timeout = None if start_timeout is None else float(start_timeout)
        self.deletion_timeout = float(deletion_timeout)
        self.command_timeout = float(command_timeout)
        self.array_limit = array_limit
        self.gpu_type = gpu_type or None

        self._path_envs: dict[str, str] = {}
        self._runnables_before: list[dict] = []
        self._runnables_after: list[dict] = []
        for runnable in sorted(
            (copy.deepcopy(r) for r in runnables if isinstance(r, dict)),
            key=lambda r: r.get("order", 0),
        ):
            order = runnable.pop("order", 0)
            (self._runnables_before if order < 0 else self._runnables_after).append(runnable)
        self.config = self._job_config(
            service_account=service_account,
            network=network,
            subnetwork=subnetwork,
            no_external_ip_address=no_external_ip_address,
            machine_type=machine_type,
            provisioning_model=provisioning_model,
        )
        # set by post_init: its volumes are in config, and the mount_as_cwd
        # they were made for (a client may change it afterwards)
        self._volumes_added = False
        self._cwd_volume: dict | None = None
        self._applied_mount_as_cwd: str | None = None
        # name -> Batch's uid, and when it was submitted, for the jobs this
        # scheduler submitted (or found after a lost reply)
        self._uids: dict[str, str] = {}
        self._submitted_at: dict[str, float] = {}
        # array job name -> {task index: member}: the members this scheduler
        # submitted, found or was asked about; and how many tasks it has, when
        # known (to cancel the array job once none of its members is left)
        self._array_members: dict[str, dict[int, Job]] = {}
        self._array_sizes: dict[str, int] = {}
        # array jobs given up as never started (start_timeout): killing any
        # member cancels the whole job; and array jobs cancelled already
        self._timed_out_arrays: set[str] = set()
        self._cancelled_arrays: set[str] = set()
        # what the latest jobs list said of each job ({uid, state, event,
        # events, run_duration}), and the latest tasks list of each task of an
        # array job ({state, events}): usage figures and causes come from these
        self._batch_jobs: dict[str, dict[str, Any]] = {}
        self._batch_tasks: dict[tuple[str, int], dict[str, Any]] = {}
        # within one status round: its jobs list (asked once, whoever asks),
        # and whether Batch was asked again for jobs that ended by a signal
        self._in_round = False
        self._round_list: dict[str, dict[str, Any]] | None = None
        self._round_refreshed = False
        self._round_tasks_listed: set[str] = set()
        self._round_tasks: dict[str, tuple[dict[int, str] | None, bool]] = {}
        # jobs whose files show a signalled end (rc 143/137) while Batch still
        # runs them: when that was first seen (they wait end_grace for Batch)
        self._signalled_at: dict[Job, float] = {}
        self._ending_vanished = False
        # counters, for benchmarks and tests
        self.gcloud_calls = 0
        self.status_calls = 0

    @classmethod
    def _cwd_inside(cls) -> str:
        """Where ``mount_as_cwd`` is mounted in the VM."""
        return f"{cls.DEFAULT_MOUNTED_ROOT}/.cwd"

    @property
    def run_label(self) -> str:
        """The ``xqute-run`` label of this workdir's jobs (the status query filters
        on it): from the workdir as it is when asked, since clients move it
        after ``post_init``."""
        return hashlib.sha256(str(self.workdir).encode()).hexdigest()[:16]

    @property
    def _template(self) -> Diot:
        """Older name of ``config``."""
        return self.config

    # ------------------------------------------------------------ the job JSON
    @staticmethod
    def _task_spec(config: dict) -> dict:
        """``config["taskGroups"][0]["taskSpec"]``, made where missing; a
        TypeError when the JSON has another shape there."""
        groups = config.setdefault("taskGroups", [])
        if not isinstance(groups, list):
            raise TypeError(f"taskGroups must be a list (Batch's job JSON), got {groups!r}")
        if not groups:
            groups.append({})
        if not isinstance(groups[0], dict):
            raise TypeError(f"taskGroups[0] must be a dict (Batch's job JSON), got {groups[0]!r}")
        spec = groups[0].setdefault("taskSpec", {})
        if not isinstance(spec, dict):
            raise TypeError(f"taskGroups[0].taskSpec must be a dict, got {spec!r}")
        for key in ("volumes", "runnables"):
            if not isinstance(spec.setdefault(key, []), list):
                raise TypeError(f"taskGroups[0].taskSpec.{key} must be a list, got {spec[key]!r}")
        return spec

    def _job_config(self, **options: Any) -> Diot:
        """The job JSON common to all jobs: the user's keys, then the options."""
        config = json.loads(json.dumps(dict(self.config), default=str))
        spec = self._task_spec(config)
        runnables = spec["runnables"]
        # the first runnable is the job's own, as a template (the wrapper call is
        # filled in at submission); the others run after it
        if not runnables:
            runnables.append({})
        runnable = runnables[0]
        if not isinstance(runnable, dict):
            raise TypeError(f"taskGroups[0].taskSpec.runnables[0] must be a dict, got {runnable!r}")
        if self.image_uri or "container" in runnable:
            container = runnable.setdefault("container", {})
            if self.image_uri and "imageUri" not in container:
                container.setdefault("image_uri", self.image_uri)
            if self.entrypoint:
                container.setdefault("entrypoint", self.entrypoint)
            container.setdefault("commands", list(self.commands))
        else:
            runnable.setdefault("script", {})

        labels = config.setdefault("labels", {})
        if not isinstance(labels, dict):
            raise TypeError(f"labels must be a dict (Batch's job JSON), got {labels!r}")
        labels.setdefault("xqute", "true")
        labels.setdefault("user", _label_value(getpass.getuser()))
        config.setdefault("logsPolicy", {}).setdefault("destination", "CLOUD_LOGGING")

        policy: dict = {}
        if options["service_account"]:
            policy["serviceAccount"] = {"email": options["service_account"]}
            labels.setdefault("sacct", _label_value(options["service_account"].split("@", 1)[0]))
        interface = {
            key: value
            for key, value in (
                ("network", options["network"]),
                ("subnetwork", options["subnetwork"]),
                ("noExternalIpAddress", options["no_external_ip_address"]),
            )
            if value is not None
        }
        if interface:
            policy["network"] = {"networkInterfaces": [interface]}
        instance_policy = {
            key: value
            for key, value in (
                ("machineType", options["machine_type"]),
                ("provisioningModel", options["provisioning_model"]),
            )
            if value
        }
        user_policy = config.setdefault("allocationPolicy", {})
        if instance_policy:
            instances = user_policy.setdefault("instances", [])
            if not instances:
                instances.append({})
            _merge_missing(instances[0].setdefault("policy", {}), instance_policy)
        _merge_missing(user_policy, policy)
        if not user_policy:
            del config["allocationPolicy"]
        return Diot(config)

    async def post_init(self) -> None:
        """Check the options, resolve the workdir and the mounts, and append the
        volumes to ``config`` (``mount_as_cwd``'s first, then the workdir's, then
        the mounts'). Runs once: a second call changes nothing."""
        if self._volumes_added:
            return
        problems = list(self._problems)
        if self.resources.gpus:
            problems.append(self._gpu_problem(self.config, self.resources.gpus))
        problems = [problem for problem in problems if problem]
        if problems:
            raise ValueError("; ".join(problems))
        root = self.DEFAULT_MOUNTED_ROOT
        cwd_inside = self._cwd_inside()
        as_cwd = self._kwargs.get("mount_as_cwd") or None
        if as_cwd is not None:
            as_cwd = str(as_cwd)
            if not as_cwd.startswith("gs://"):
                raise ValueError(f"mount_as_cwd must be a gs:// folder, got {as_cwd!r}")
            if self.cwd and str(self.cwd) != cwd_inside:
                raise ValueError("Give either 'mount_as_cwd' or 'cwd', not both")
            self.cwd = cwd_inside
        if self.cwd and "://" in str(self.cwd):
            raise ValueError(
                f"cwd must be a folder inside the Batch VM (like {root}/data), got {self.cwd!r}"
            )
        mounts = self._kwargs.get("mount")
        mounts = [mounts] if isinstance(mounts, str) else [str(m) for m in mounts or []]
        if as_cwd:
            mounts.insert(0, f"{as_cwd}:{cwd_inside}")
        pairs, path_envs = await sanitize_mounts(mounts, root)
        for host, _ in pairs:
            if not isinstance(host, GSPath):
                raise ValueError(
                    f"Batch mounts gs:// folders only; {str(host)!r} is not one "
                    "(use gs://bucket/dir:/path/inside or NAME=gs://bucket/dir)"
                )
        self._resolve_workdir(pairs, as_cwd)

        volumes = [
            Diot(self._gcs_volume(str(host), str(inside)))
            for host, inside in pairs
        ]
        cwd_volume = next(
            (v for v in volumes if as_cwd and PurePosixPath(v["mountPath"]) == PurePosixPath(cwd_inside)),
            None,
        )
        if cwd_volume is not None:  # first, so the workdir's is at index 1
            volumes.remove(cwd_volume)
            volumes.insert(0, cwd_volume)
        if not self._workdir_is_mounted(pairs):
            workdir_volume = self._gcs_volume(str(self.workdir), str(self.workdir.mounted))
            volumes.insert(int(cwd_volume is not None), Diot(workdir_volume))
        self._task_spec(self.config)["volumes"].extend(volumes)
        self._path_envs = path_envs
        self._cwd_volume = cwd_volume
        self._applied_mount_as_cwd = as_cwd
        self._volumes_added = True

    def _resolve_workdir(self, pairs: list, as_cwd: str | None) -> None:
        """Set ``workdir`` (a gs:// folder, and where the VM sees it) from the
        options: a relative one lies in the folder the jobs run in, which must be
        in a mounted bucket (``mount_as_cwd``, or a ``cwd`` under a mount)."""
        text = str(self._kwargs.get("workdir") or defaults.DEFAULT_WORKDIR_NAME)
        mounted = self._kwargs.get("mounted_workdir")
        if text.startswith("gs://"):
            mounted = str(mounted or f"{self.DEFAULT_MOUNTED_ROOT}/{defaults.DEFAULT_WORKDIR_NAME}")
        elif "://" in text or text.startswith("/"):
            raise ValueError(
                f"The gbatch scheduler needs a gs:// workdir (Batch VMs mount it), got {text!r}"
            )
        else:
            relative = PurePosixPath(text)
            if ".." in relative.parts:
                raise ValueError(f"A relative workdir must not leave the jobs' cwd, got {text!r}")
            if str(relative) == ".":
                relative = PurePosixPath(defaults.DEFAULT_WORKDIR_NAME)
            if as_cwd:
                cloud, inside = as_cwd, PurePosixPath(self._cwd_inside())
            elif self.cwd:
                cloud, inside = self._cwd_in_bucket(pairs)
            else:
                raise ValueError(
                    f"The gbatch scheduler needs a gs:// workdir (Batch VMs mount it), got "
                    f"{text!r}; a relative one needs mount_as_cwd, or a cwd in a mounted folder"
                )
            text = f"{cloud.rstrip('/')}/{relative}"
            # the folder the workdir lies in is mounted already: given
            # mounted_workdir would name another place
            mounted = str(inside / relative)
        self.workdir = SpecPath(text, mounted=mounted)
        self._kwargs["workdir"] = text
        self._kwargs["mounted_workdir"] = mounted

    def _cwd_in_bucket(self, pairs: list) -> tuple[str, PurePosixPath]:
        """(gs:// folder, VM path) of ``cwd``, through the mount that holds it
        (the deepest one)."""
        cwd = PurePosixPath(str(self.cwd))
        holders = [
            (PurePosixPath(str(inside)), host)
            for host, inside in pairs
            if cwd.is_relative_to(PurePosixPath(str(inside)))
        ]
        if not holders:
            raise ValueError(
                f"A relative workdir is taken in cwd ({str(cwd)!r}), which is under none "
                f"of the mounted folders ({', '.join(str(i) for _, i in pairs) or 'none'}); "
                "give a gs:// workdir, or mount the bucket folder that holds cwd"
            )
        inside, host = max(holders, key=lambda h: len(h[0].parts))
        below = cwd.relative_to(inside)
        cloud = str(host).rstrip("/")
        return (cloud if str(below) == "." else f"{cloud}/{below}"), cwd

    def _workdir_is_mounted(self, pairs: list) -> bool:
        """Whether a mount shows the workdir where the VM expects it already."""
        mounted = PurePosixPath(str(self.workdir.mounted))
        for host, inside in pairs:
            inside = PurePosixPath(str(inside))
            if mounted == inside or inside in mounted.parents:
                below = mounted.relative_to(inside)
                cloud = str(host).rstrip("/")
                if (cloud if str(below) == "." else f"{cloud}/{below}") == str(self.workdir).rstrip("/"):
                    return True
        return False

    def _sync_mount_as_cwd(self) -> None:
        """Take a ``_kwargs["mount_as_cwd"]`` that a client set (or changed) after
        ``post_init``: its volume replaces the old one, first in ``config``, and
        the jobs run there. (The workdir stays where post_init put it.)"""
        wanted = self._kwargs.get("mount_as_cwd") or None
        wanted = None if wanted is None else str(wanted)
        if not self._volumes_added or wanted == self._applied_mount_as_cwd:
            return
        if wanted is not None and not wanted.startswith("gs://"):
            raise SubmissionError(f"mount_as_cwd must be a gs:// folder, got {wanted!r}")
        cwd_inside = self._cwd_inside()
        volumes = self._task_spec(self.config)["volumes"]
        volumes[:] = [v for v in volumes if v is not self._cwd_volume]
        self._cwd_volume = None
        if wanted is not None:
            self._cwd_volume = Diot(self._gcs_volume(wanted, cwd_inside))
            volumes.insert(0, self._cwd_volume)
            if not self.cwd:
                self.cwd = cwd_inside
        elif self.cwd == cwd_inside:
            self.cwd = None
        self._applied_mount_as_cwd = wanted

    @staticmethod
    def _gcs_volume(url: str, mount_path: str) -> dict:
        return {"gcs": {"remotePath": url.split("://", 1)[1].rstrip("/")}, "mountPath": mount_path}

    def jobcmd_init(self, job: Job) -> str:
        """Export the named mounts' paths, then the base's init code."""
        exports = [f"export {name}={shell_quote(path)}" for name, path in self._path_envs.items()]
        return "\n".join([*exports, super().jobcmd_init(job)])

    def job_json(self, job: Job, script: SpecPath) -> dict:
        """The Batch job JSON for ``job`` whose wrapper is ``script``: a copy of
        ``config`` as it is now, with the wrapper call in the job's runnable."""
        config = json.loads(json.dumps(self.config, default=str))
        spec = self._task_spec(config)
        script_inside = str(script.mounted)
        lang = defaults.JOBCMD_WRAPPER_LANG
        runnables = spec["runnables"]
        runnable = runnables[0] if runnables else {}
        if not isinstance(runnable, dict):
            raise TypeError(f"taskGroups[0].taskSpec.runnables[0] must be a dict, got {runnable!r}")
        if "container" in runnable:
            container = runnable["container"]
            # Batch's JSON names it imageUri; image_uri is what 2.x clients use
            if "image_uri" in container:
                container.setdefault("imageUri", container.pop("image_uri"))
            if not container.get("imageUri"):
                raise SubmissionError("A container runnable needs an image: give image_uri=")
            commands = [str(c) for c in container.get("commands") or []]
            if any("{script}" in c for c in commands):
                commands = [c.replace("{lang}", lang).replace("{script}", script_inside) for c in commands]
            elif container.get("entrypoint") and commands:
                # e.g. entrypoint "/bin/sh", commands ["-c"]: one command string
                commands.append(shlex.join([*shlex.split(lang), script_inside]))
            elif container.get("entrypoint"):
                commands = [script_inside]  # the entrypoint runs the wrapper
            else:
                container["entrypoint"] = lang
                commands.append(script_inside)
            container["commands"] = commands
        else:
            commands = list(self.commands)
            if any("{script}" in str(c) for c in commands):
                words = [
                    shlex.quote(str(c)).replace("{lang}", lang).replace("{script}", script_inside)
                    for c in commands
                ]
            else:
                words = [shlex.quote(str(c)) for c in commands]
                words += [*map(shlex.quote, shlex.split(lang)), shlex.quote(script_inside)]
            runnable.setdefault("script", {})["text"] = " ".join(words)
        spec["runnables"] = [
            *copy.deepcopy(self._runnables_before),
            runnable,
            *copy.deepcopy(self._runnables_after),
            *runnables[1:],
        ]
        labels = config.setdefault("labels", {})
        if not isinstance(labels, dict):
            raise TypeError(f"labels must be a dict (Batch's job JSON), got {labels!r}")
        labels["xqute-run"] = self.run_label  # the status query filters on it
        self.apply_resources(config, getattr(job, "resources", None) or Resources())
        return config

    # ------------------------------------------------------------ resources
    def apply_resources(self, config: dict, resources: Resources) -> None:
        """Put ``resources`` into the job JSON ``config`` (a submission's copy),
        where the user's JSON does not say already (that wins, with one
        warning). Int64 fields are strings, as Batch's JSON writes them."""
        if not resources:
            return
        spec = self._task_spec(config)
        compute = spec.get("computeResource")
        if compute is None:
            compute = {}
        elif not isinstance(compute, dict):
            raise TypeError(f"taskGroups[0].taskSpec.computeResource must be a dict, got {compute!r}")
        for resource, value, field in (
            ("cpus", resources.cpus, "cpuMilli"),
            ("memory", resources.memory_mb, "memoryMib"),
        ):
            if value is None:
                continue
            given = _given_key(compute, field)
            if given is not None:
                self.raw_option_wins(resource, f"taskSpec.computeResource.{given}")
            else:
                compute[field] = str(value * 1000 if resource == "cpus" else value)
        if compute:
            spec["computeResource"] = compute
        if resources.time_s is not None:
            given = _given_key(spec, "maxRunDuration")
            if given is not None:
                self.raw_option_wins("time", f"taskSpec.{given}")
            else:
                spec["maxRunDuration"] = f"{resources.time_s}s"
        if resources.gpus:
            self._apply_gpus(config, resources.gpus)

    @staticmethod
    def _first_instance(config: dict, make: bool) -> dict | None:
        """``allocationPolicy.instances[0]`` (made when ``make``; None when
        missing); TypeError for another shape there."""
        policy = config.get("allocationPolicy")
        if policy is None:
            if not make:
                return None
            policy = config["allocationPolicy"] = {}
        if not isinstance(policy, dict):
            raise TypeError(f"allocationPolicy must be a dict (Batch's job JSON), got {policy!r}")
        instances = policy.get("instances")
        if instances is None:
            if not make:
                return None
            instances = policy["instances"] = []
        if not isinstance(instances, list):
            raise TypeError(f"allocationPolicy.instances must be a list, got {instances!r}")
        if not instances:
            if not make:
                return None
            instances.append({})
        if not isinstance(instances[0], dict):
            raise TypeError(f"allocationPolicy.instances[0] must be a dict, got {instances[0]!r}")
        return instances[0]

    @staticmethod
    def _accelerators(instance: dict | None) -> list:
        if instance is None:
            return []
        policy = instance.get("policy") or {}
        if not isinstance(policy, dict):
            raise TypeError(f"allocationPolicy.instances[0].policy must be a dict, got {policy!r}")
        accelerators = policy.get("accelerators") or []
        if not isinstance(accelerators, list) or not all(isinstance(a, dict) for a in accelerators):
            raise TypeError(
                "allocationPolicy.instances[0].policy.accelerators must be a list of dicts, "
                f"got {accelerators!r}"
            )
        return accelerators

    def _gpu_problem(self, config: dict, gpus: int) -> str:
        """Why ``gpus`` GPUs cannot be asked of Batch with ``config`` ("" if
        they can): no accelerator type is known."""
        instance = self._first_instance(config, make=False)
        if instance is not None and _given_key(instance, "instanceTemplate") is not None:
            return ""
        accelerators = self._accelerators(instance)
        if self.gpu_type or (accelerators and accelerators[0].get("type")):
            return ""
        return (
            f"resources ask for {gpus} GPU(s), but Batch needs their type: give the "
            "option gpu_type= (e.g. nvidia-tesla-t4), or an accelerator in "
            "allocationPolicy.instances[0].policy.accelerators"
        )

    def _apply_gpus(self, config: dict, gpus: int) -> None:
        instance = self._first_instance(config, make=False)
        if instance is not None:
            template = _given_key(instance, "instanceTemplate")
            if template is not None:  # the template says the VM, GPUs and all
                self.raw_option_wins("gpus", f"allocationPolicy.instances[0].{template}")
                return
            accelerators = self._accelerators(instance)
            if accelerators and "count" in accelerators[0]:
                self.raw_option_wins("gpus", "allocationPolicy.instances[0].policy.accelerators[0].count")
                return
        problem = self._gpu_problem(config, gpus)
        if problem:
            raise SubmissionError(problem)
        instance = self._first_instance(config, make=True)
        assert instance is not None
        policy = instance.setdefault("policy", {})
        accelerators = policy.setdefault("accelerators", [])
        if accelerators:  # the user's, with a type and no count
            accelerators[0]["count"] = str(gpus)
        else:
            accelerators.append({"type": self.gpu_type, "count": str(gpus)})
        if _given_key(instance, "installGpuDrivers") is None:
            instance["installGpuDrivers"] = True

    def batch_job_name(self, job: Job) -> str:
        """The Batch job id of ``job``: its job name made what Batch takes (lower
        case letters, digits and hyphens, starting with a letter, 63 at most)."""
        return self._batch_id(self.job_name(job))

    def array_batch_name(self, jobs: Sequence[Job]) -> str:
        """The Batch job id of the array of ``jobs``: ``array_name(jobs)`` made a
        Batch id as ``batch_job_name`` does (it ends in ``-a<hash of the
        members>``, where a single job's ends in its index)."""
        return self._batch_id(self.array_name(jobs))

    @staticmethod
    def _batch_id(text: str) -> str:
        name = _BATCH_BAD_NAME_CHARS.sub("-", text.lower())
        if not name[:1].isalpha():
            name = f"x-{name}"
        if len(name) > 63:  # shortened, and a hash keeps it unique
            name = f"{name[:54].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
        if not JOB_NAME_RE.match(name):
            raise SubmissionError(
                f"{name!r} is not a valid Batch job id (1-63 lowercase letters, digits or "
                "hyphens, starting with a letter, not ending with a hyphen)"
            )
        return name

    def array_folder(self, name: str) -> SpecPath:
        """``<workdir>/.arrays/<name>``: the dispatch script, JSON and kill
        markers of the array job ``name`` (the VM sees it through the workdir's
        volume)."""
        return self.workdir / ARRAYS_FOLDER / name

    # ------------------------------------------------------------ gcloud
    async def _gcloud(self, *args: str, input: str | None = None, timeout: float | None = None):
        self.gcloud_calls += 1
        return await run_command(
            self.gcloud,
            *args,
            "--project",
            self.project,
            "--location",
            self.location,
            input=input,
            timeout=timeout or self.command_timeout,
        )

    async def submit_job(self, job: Job) -> str:
        """Write the wrapper and the job JSON to the metadir, then submit it."""
        name = self.batch_job_name(job)
        self._sync_mount_as_cwd()  # before the wrapper, which cds to the cwd
        script = await self.wrapped_job_script(job)
        config_text = json.dumps(self.job_json(job, script), indent=2)
        await write_meta(job.metadir / f"{self.wrapped_script_name}.json", config_text)
        await self._submit_config(name, config_text, f"Job {job.index}")
        return name

    async def submit_array(self, jobs: Sequence[Job], throttle: int) -> list[str]:
        """Submit ``jobs`` as ONE Batch job of ``len(jobs)`` tasks, at most
        ``throttle`` running at once; task ``i`` runs ``jobs[i]``'s own wrapper.

        Writes each member's wrapper, the dispatch script and the Batch JSON
        (``<workdir>/.arrays/<name>/dispatch.sh`` and ``job.json``) and the
        members' jid files, then makes one ``gcloud batch jobs submit``.
        Returns the members' job ids, ``<Batch job name>:<task index>``.
        """
        name = self.array_batch_name(jobs)
        jids = [member_jid(name, task) for task in range(len(jobs))]
        self._sync_mount_as_cwd()  # before the wrappers, which cd to the cwd
        folder = self.array_folder(name)
        dispatch = folder / "dispatch.sh"
        config = self.job_json(jobs[0], dispatch)
        group = config["taskGroups"][0]
        if group.get("taskEnvironments"):
            raise SubmissionError(
                "taskGroups[0].taskEnvironments sets the task count of a Batch job, so "
                "jobs cannot go as arrays with it: give the scheduler option array: False"
            )
        try:
            # the user's own parallelism, if any, caps the throttle
            wanted = int(group.get("parallelism") or MAX_PARALLEL_TASKS)
        except (TypeError, ValueError):
            raise SubmissionError(
                f"taskGroups[0].parallelism must be an integer, got {group['parallelism']!r}"
            ) from None
        group["taskCount"] = str(len(jobs))
        group["parallelism"] = str(max(1, min(throttle, len(jobs), wanted, MAX_PARALLEL_TASKS)))
        config_text = json.dumps(config, indent=2)
        # the jid files first too: a manager killed once Batch has the array,
        # before the base class records the ids, leaves them for a rerun
        await _bounded(
            [
                *(self.wrapped_job_script(job) for job in jobs),
                *(job.set_jid(jid) for job, jid in zip(jobs, jids)),
                write_meta(dispatch, self._dispatch_script(name, jobs)),
                write_meta(folder / "job.json", config_text),
            ]
        )
        label = f"An array of {len(jobs)} jobs ({jobs[0].index}..{jobs[-1].index})"
        await self._submit_config(name, config_text, label)
        self._remember_array(name, jobs)
        return jids

    def _dispatch_script(self, name: str, jobs: Sequence[Job]) -> str:
        """The script every task of the array job ``name`` runs: it execs the
        wrapper of member ``$BATCH_TASK_INDEX``, unless that member was killed
        before its task started (a ``killed.<task>`` file in the array's folder)."""
        marker = shell_quote(str(self.array_folder(name).mounted / "killed."))
        return "\n".join(
            [
                f"#!{defaults.JOBCMD_WRAPPER_LANG}",
                f"# Batch job {name}: {len(jobs)} xqute jobs; task i runs job i's own wrapper.",
                f'if [ -e {marker}"${{BATCH_TASK_INDEX:-}}" ]; then',
                '    echo "xqute: the job of task ${BATCH_TASK_INDEX:-} was killed before it started" >&2',
                "    exit 1",
                "fi",
                self.array_dispatch(jobs, "BATCH_TASK_INDEX", 0),
                "",
            ]
        )

    def _remember_array(self, name: str, jobs: Sequence[Job]) -> None:
        self._array_members[name] = dict(enumerate(jobs))
        self._array_sizes[name] = len(jobs)

    async def max_array_size(self) -> int:
        """The most members one array job gets: the ``array_limit`` option."""
        return self.array_limit

    async def _submit_config(self, name: str, config_text: str, label: str) -> None:
        """``gcloud batch jobs submit name`` with the job JSON ``config_text``;
        a name taken by an old job is freed first. Raises SubmissionError."""
        for attempt in (1, 2):
            result = await self._gcloud(
                "batch", "jobs", "submit", name, "--config", "-", "--format", "json",
                input=config_text,
            )
            if result.ok:
                break
            message = _one_line(result.stderr or result.stdout) or f"gcloud exited {result.rc}"
            if result.rc in (126, 127):  # not found, or not runnable
                raise SubmissionError(
                    f"{message} (install the Google Cloud CLI, or set the scheduler "
                    "option gcloud= to its path)"
                )
            if "ALREADY_EXISTS" in message and attempt == 1:
                # taken by an old job (after a lost reply, find_submitted saw it is not this one)
                await self._free_name(label, name)
                continue
            raise SubmissionError(
                message,
                transient=result.rc == -1 or bool(_TRANSIENT_SUBMIT_RE.search(message)),
                # the job may have been created all the same: see find_submitted
                ambiguous=result.rc == -1 or bool(_AMBIGUOUS_SUBMIT_RE.search(message)),
            )
        resource = _load_json(result.stdout)
        uid = str(resource.get("uid", "")) if isinstance(resource, dict) else ""
        if not isinstance(resource, dict):
            logger.debug("%s: gcloud printed no JSON on submit: %r", label, result.stdout[:200])
        self._remember_submitted(name, uid)

    def _remember_submitted(self, name: str, uid: str) -> None:
        self._uids[name] = uid
        self._submitted_at[name] = time.monotonic()

    async def _describe_state(self, name: str) -> tuple[str | None, dict]:
        """(state, resource) of job ``name``; state None when Batch has no such job."""
        result = await self._gcloud("batch", "jobs", "describe", name, "--format", "json")
        if not result.ok:
            message = result.stderr + result.stdout
            if "NOT_FOUND" in message or "not found" in message.lower():
                return None, {}
            raise SubmissionError(
                f"cannot ask Batch about job {name}: {_one_line(message)}", transient=True
            )
        resource = _load_json(result.stdout)
        if not isinstance(resource, dict):
            resource = {}
        status = resource.get("status")
        state = status.get("state") if isinstance(status, dict) else None
        return str(state if state is not None else "STATE_UNSPECIFIED"), resource

    async def find_submitted(self, job: Job, ran: bool) -> str | None:
        """After a submit whose reply was lost: the Batch job of ``job``'s name,
        when it carries this workdir's ``xqute-run`` label and is queued or
        running (with ``ran``, in any state: its wrapper has run). None when
        there is none, or Batch cannot be asked and the job has not run (a
        submit again then meets the name taken, and frees it)."""
        name = self.batch_job_name(job)
        return name if await self._find_by_name(name, ran) else None

    async def find_submitted_array(self, jobs: Sequence[Job], ran: bool) -> list[str] | None:
        """After an array submit whose reply was lost: the members' job ids when
        Batch has the array job of ``array_batch_name(jobs)`` (one ``describe``;
        the same rules as ``find_submitted``), else None."""
        name = self.array_batch_name(jobs)
        if not await self._find_by_name(name, ran):
            return None
        self._remember_array(name, jobs)
        return [member_jid(name, task) for task in range(len(jobs))]

    async def _find_by_name(self, name: str, ran: bool) -> bool:
        """Whether Batch has job ``name`` of this workdir (``find_submitted``'s
        rules); it is then followed as submitted."""
        try:
            state, resource = await self._describe_state(name)
        except SubmissionError:
            if ran:
                raise
            return False
        labels = resource.get("labels")
        if state is None or not isinstance(labels, dict) or labels.get("xqute-run") != self.run_label:
            return False
        if not ran and state not in PENDING_STATES | RUNNING_STATES:
            return False  # an old job of the same name: freed when submitting again
        self._remember_submitted(name, str(resource.get("uid", "")))
        return True

    async def _free_name(self, label: str, name: str) -> None:
        """Delete the old Batch job holding ``name`` and wait until it is gone."""
        logger.info("%s: Batch job %s exists from before; deleting it first", label, name)
        result = await self._gcloud("batch", "jobs", "delete", name, "--quiet")
        if not result.ok and "NOT_FOUND" not in result.stderr:
            raise SubmissionError(
                f"job name {name} is taken and the old job could not be deleted: "
                f"{_one_line(result.stderr)}",
                transient=True,
            )
        deadline = time.monotonic() + self.deletion_timeout
        while True:
            state, _ = await self._describe_state(name)
            if state is None:
                return
            if time.monotonic() > deadline:
                raise SubmissionError(
                    f"the old Batch job {name} is still {state} after "
                    f"{self.deletion_timeout:.0f} s; its name cannot be reused yet",
                    transient=True,
                )
            if state != "DELETION_IN_PROGRESS":
                # a finished job's delete may not have been taken yet: ask again
                await self._gcloud("batch", "jobs", "delete", name, "--quiet")
            await asyncio.sleep(DELETION_CHECK_INTERVAL)

    # ------------------------------------------------------------ killing
    async def kill_jobs(self, jobs: Sequence[Job]) -> None:
        """Cancel every job (a few gcloud calls at a time); delete those that
        cannot be cancelled.

        Array members: Batch cannot stop one task, so the array job is
        cancelled (once) when every member it still runs or holds is among
        ``jobs`` (or was given up as never started). A member killed while
        others of its array live is left to the base class, which records it
        killed; its task gets a ``killed.<task>`` marker, so it does not start
        if it has not yet (one already running runs on to its end)."""
        names: list[str] = []
        arrays: dict[str, dict[int, Job]] = {}
        for job in jobs:
            if not job.jid:
                continue
            member = parse_member_jid(job.jid)
            if member is None:
                names.append(str(job.jid))
            else:
                arrays.setdefault(member[0], {})[member[1]] = job
        for name, killing in arrays.items():
            if name in self._cancelled_arrays:
                continue  # all of its tasks are going already
            if name in self._timed_out_arrays or not await self._others_live(name, killing):
                self._cancelled_arrays.add(name)
                names.append(name)
            else:
                await self._skip_tasks(name, killing)
        limit = asyncio.Semaphore(KILL_CONCURRENCY)

        async def kill(name: str) -> None:
            async with limit:
                result = await self._gcloud("batch", "jobs", "cancel", name, "--quiet")
                message = result.stderr + result.stdout
                if result.ok or "FAILED_PRECONDITION" in message or "NOT_FOUND" in message:
                    return
                logger.debug("gcloud batch jobs cancel %s: %s; deleting it", name, _one_line(message))
                result = await self._gcloud("batch", "jobs", "delete", name, "--quiet")
                if not result.ok:
                    logger.warning(
                        "Could not cancel or delete Batch job %s: %s", name, _one_line(result.stderr)
                    )

        await asyncio.gather(*(kill(name) for name in names))

    async def _others_live(self, name: str, killing: dict[int, Job]) -> bool:
        """Whether the array job ``name`` holds a member that is not being
        killed (``killing``: task -> job) and has not ended: a queued or running
        task whose job has not ended or moved on to another trial. Answered
        from memory when this scheduler knows every member (it submitted the
        array), else from one ``gcloud batch tasks list``; when Batch cannot
        be asked, the others are taken as live (they are spared)."""
        known = self._array_members.get(name, {})

        def settled(task: int) -> bool:
            if task in killing:
                return True
            job = known.get(task)
            return job is not None and (
                JobStatus.is_final(job._status) or job.jid != member_jid(name, task)
            )

        size = self._array_sizes.get(name)
        if size is not None and all(task in known or task in killing for task in range(size)):
            return not all(settled(task) for task in range(size))
        states, gone = await self._list_tasks(name)
        if gone:
            return False
        if states is None:
            return True
        return any(
            state not in TASK_ENDED_STATES and not settled(task) for task, state in states.items()
        )

    async def _skip_tasks(self, name: str, killing: dict[int, Job]) -> None:
        """Mark the tasks ``killing`` of the array job ``name`` killed, so the
        dispatch script does not start them."""
        folder = self.array_folder(name)
        await _bounded(
            write_meta(folder / f"killed.{task}", "killed by xqute\n") for task in killing
        )
        logger.warning(
            "Batch cannot stop one task of a job: job(s) %s (task(s) %s of Batch job %s, "
            "whose other tasks go on) are recorded as killed; a task not started yet will "
            "not start, one already running runs on to its end",
            ", ".join(str(job.index) for job in killing.values()),
            ", ".join(map(str, killing)),
            name,
        )

    # ------------------------------------------------------------ querying
    async def query_jobs(self, jobs: Sequence[Job]) -> dict[Job, JobQuery]:
        """What Batch says about ``jobs``: one ``gcloud batch jobs list`` for all
        of them, and for the members of an array job that is RUNNING one
        ``gcloud batch tasks list`` per array job (not per member). (The base
        class paces these calls and gives ended jobs' files their grace.)"""
        answers: dict[Job, JobQuery] = {}
        by_name: dict[str, Job] = {}
        arrays: dict[str, dict[int, Job]] = {}
        for job in jobs:
            jid = job.jid or await job.get_jid()
            member = parse_member_jid(jid) if jid else None
            if not jid:
                answers[job] = JobQuery(JobQuery.ENDED, f"no Batch job name was recorded for job {job.index}")
            elif member is None:
                by_name[str(jid)] = job
            else:
                name, task = member
                arrays.setdefault(name, {})[task] = job
                # followed (say adopted on a rerun): known when it is killed
                self._array_members.setdefault(name, {})[task] = job
        if not by_name and not arrays:
            return answers
        found = await self._jobs_listed()
        if found is None:  # Batch did not answer: unknown for now
            return answers
        now = time.monotonic()
        for name, job in by_name.items():
            entry = self._entry(found, name)
            if entry is None:
                query = self._missing(name, now)
            else:
                query = self._to_query(name, entry["state"], entry["event"], now)
            if query is not None:
                answers[job] = query
        running: list[str] = []
        for name, members in arrays.items():
            entry = self._entry(found, name)
            if entry is not None and entry["state"] in RUNNING_STATES:
                running.append(name)  # its tasks say which members run
                continue
            for task, job in members.items():
                if entry is None:
                    query = self._missing(name, now)
                else:
                    query = self._member_query(name, task, entry["state"], entry["event"], now)
                if query is not None:
                    answers[job] = query
        limit = asyncio.Semaphore(KILL_CONCURRENCY)

        async def tasks_of(name: str) -> tuple[dict[int, str] | None, bool]:
            async with limit:
                return await self._list_tasks(name)

        listed = await asyncio.gather(*(tasks_of(name) for name in running))
        for name, (states, gone) in zip(running, listed):
            for task, job in arrays[name].items():
                if gone:  # deleted since the jobs list
                    query = self._missing(name, now)
                elif states is None:  # Batch did not answer: unknown for now
                    continue
                else:
                    query = self._task_query(name, task, states.get(task))
                if query is not None:
                    answers[job] = query
        return answers

    def _entry(self, found: dict[str, dict[str, str]], name: str) -> dict[str, str] | None:
        """The listed job ``name``; None when not listed, or when the listed one
        is an older job of the same name (another uid than the one submitted)."""
        entry = found.get(name)
        uid = self._uids.get(name)
        if entry is not None and uid and entry["uid"] and entry["uid"] != uid:
            return None
        return entry

    def _missing(self, name: str, now: float) -> JobQuery | None:
        """A job the list did not show: just submitted (the list may lag behind
        for ``LIST_LAG`` seconds: no answer yet), or gone."""
        submitted = self._submitted_at.get(name)
        if submitted is not None and now - submitted < LIST_LAG:
            return None
        return JobQuery(
            JobQuery.ENDED,
            f"Batch job {name} is gone from project {self.project}, location "
            f"{self.location} (deleted outside xqute?) and left no return code",
        )

    def _to_query(self, name: str, state: str, event: str, now: float, what: str = "") -> JobQuery:
        """The answer for a job (or a member, ``what`` naming its task) of the
        Batch job ``name`` in ``state``."""
        what = what or f"Batch job {name}"
        detail = f": {event}" if event else ""
        if state in RUNNING_STATES:
            return JobQuery(JobQuery.RUNNING)
        if state in PENDING_STATES:
            submitted = self._submitted_at.setdefault(name, now)
            if self.start_timeout is not None and now - submitted > self.start_timeout:
                return JobQuery(
                    JobQuery.ERROR,
                    f"{what} did not start within {self.start_timeout:.0f} s "
                    f"(still {state}{detail})",
                )
            return JobQuery(JobQuery.PENDING)
        if state == "SUCCEEDED":
            return JobQuery(
                JobQuery.ENDED,
                f"{what} SUCCEEDED but its wrapper recorded no return code "
                f"in {self.workdir}",
            )
        if state in ENDED_STATES:
            # Batch's reserved exit codes: 50005 a task over its maxRunDuration
            # (resources' time), 50001 a preempted VM, ...
            cause = _reserved_cause(event)
            return JobQuery(JobQuery.ENDED, f"{what} ended in state {state}{detail}", cause=cause)
        logger.warning("Batch job %s is in state %s, unknown to xqute; taken as pending", name, state)
        return JobQuery(JobQuery.PENDING)

    def _member_query(self, name: str, task: int, state: str, event: str, now: float) -> JobQuery:
        """A member of the array job ``name`` that is not RUNNING: the job's
        state answers for all its tasks (queued: all pending; ended: all ended)."""
        query = self._to_query(name, state, event, now, what=f"Batch job {name} (task {task})")
        if query.state == JobQuery.ERROR:  # never started: the whole job is given up
            self._timed_out_arrays.add(name)
        return query

    def _task_query(self, name: str, task: int, state: str | None) -> JobQuery:
        """A member of the RUNNING array job ``name``, by its task's state."""
        what = f"Task {task} of Batch job {name}"
        if state is None:
            return JobQuery(JobQuery.ENDED, f"Batch job {name} has no task {task}")
        if state in TASK_RUNNING_STATES:
            return JobQuery(JobQuery.RUNNING)
        if state in TASK_PENDING_STATES:
            return JobQuery(JobQuery.PENDING)
        if state == "SUCCEEDED":
            return JobQuery(
                JobQuery.ENDED,
                f"{what} SUCCEEDED but its wrapper recorded no return code in {self.workdir}",
            )
        if state == "UNEXECUTED":
            return JobQuery(JobQuery.ENDED, f"{what} was never run (UNEXECUTED)")
        if state in TASK_ENDED_STATES:
            code = _figures_from_task_events(
                self._batch_tasks.get((name, task), {}).get("events", [])
            ).get("exit_code")
            detail = f" with exit code {code}" if code is not None else ""
            return JobQuery(
                JobQuery.ENDED,
                f"{what} ended in state {state}{detail}",
                cause=RESERVED_EXIT_CAUSES.get(code, "") if code is not None else "",
            )
        logger.warning("%s is in state %s, unknown to xqute; taken as pending", what, state)
        return JobQuery(JobQuery.PENDING)

    async def _list_tasks(
        self, name: str, fresh: bool = False
    ) -> tuple[dict[int, str] | None, bool]:
        """({task index: state} of the array job ``name``, or None on failure;
        whether Batch has no such job). Within a status round, once per array
        job (unless ``fresh``): states, causes and usage share it."""
        if self._in_round and not fresh and name in self._round_tasks:
            return self._round_tasks[name]
        answer = await self._list_tasks_now(name)
        if self._in_round:
            self._round_tasks[name] = answer
        return answer

    async def _list_tasks_now(self, name: str) -> tuple[dict[int, str] | None, bool]:
        self.status_calls += 1
        result = await self._gcloud(
            "batch", "tasks", "list", "--job", name,
            "--format", "json(name,status.state,status.statusEvents)",
        )
        if not result.ok:
            message = result.stderr + result.stdout
            if "NOT_FOUND" in message:
                return None, True
            logger.warning(
                "gcloud batch tasks list --job %s failed (%s); asking again later",
                name, _one_line(message),
            )
            return None, False
        listed = _load_json(result.stdout or "[]")
        states = _tasks_from_list(listed)
        if states is not None:
            # each task's events: its run duration, VM and exit code
            for item in listed:
                index = int(item["name"].rsplit("/", 1)[-1])
                self._batch_tasks[(name, index)] = {
                    "state": states[index], "events": _events_of(item.get("status") or {}),
                }
        if states is None:
            logger.warning(
                "gcloud batch tasks list --job %s printed no list of tasks; asking again "
                "later: %r", name, result.stdout[:200],
            )
        return states, False

    async def _jobs_listed(self) -> dict[str, dict[str, Any]] | None:
        """This workdir's jobs as Batch lists them: one ``gcloud batch jobs
        list`` per status round, whichever part of the round asks first."""
        if self._in_round and self._round_list is not None:
            return self._round_list
        found = await self._list_jobs()
        if self._in_round:
            self._round_list = found
        return found

    async def _list_jobs(self) -> dict[str, dict[str, Any]] | None:
        """{name: {uid, state, event, events, run_duration}} of this workdir's
        jobs; None on failure."""
        self.status_calls += 1
        result = await self._gcloud(
            "batch", "jobs", "list",
            "--filter", f"labels.xqute-run={self.run_label}",
            "--format", "json(name,uid,status.state,status.statusEvents,status.runDuration)",
        )
        if not result.ok:
            logger.warning(
                "gcloud batch jobs list failed (%s); asking again later", _one_line(result.stderr)
            )
            return None
        found = _jobs_from_list(_load_json(result.stdout or "[]"))
        if found is None:
            logger.warning(
                "gcloud batch jobs list printed no list of jobs; asking again later: %r",
                result.stdout[:200],
            )
        else:
            self._batch_jobs.update(found)
        return found

    # ------------------------------------------------------------ usage, causes
    async def refresh_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        """One status round (the base class's), in which Batch's jobs list is
        asked at most once, whatever needs it (states, causes, usage)."""
        self._in_round, self._round_list, self._round_refreshed = True, None, False
        self._round_tasks_listed = set()
        self._round_tasks = {}
        try:
            return await super().refresh_jobs(jobs)
        finally:
            self._in_round, self._round_list, self._round_tasks = False, None, {}

    def _batch_live(self, jid: Any) -> bool:
        """Whether the latest lists show the trial ``jid`` queued or running."""
        entry, task = self._batch_record(jid)
        if task is not None:
            return task["state"] in TASK_PENDING_STATES or task["state"] in TASK_RUNNING_STATES
        return entry is not None and (
            entry["state"] in PENDING_STATES or entry["state"] in RUNNING_STATES
        )

    async def _end_from_files(self, job: Job, status: int | None = None) -> bool:
        """The base class's, but a job whose wrapper was stopped by a signal
        (rc 143 or 137: perhaps Batch stopping it at its maxRunDuration) while
        Batch's lists still show it running waits up to ``end_grace`` seconds
        (the rounds ask Batch about it meanwhile) for Batch to say how it
        ended, so that its cause is Batch's (``timeout``), not ``killed``."""
        if status is None:
            status = await job.read_status_file()
        if (
            self._in_round
            and not self._ending_vanished
            and status == JobStatus.FAILED
            and self._batch_live(job.jid)
            and await job.read_rc_file() in _SIGNALLED_RCS
        ):
            first = self._signalled_at.setdefault(job, time.monotonic())
            if time.monotonic() - first < self.end_grace:
                return False
        self._signalled_at.pop(job, None)
        return await super()._end_from_files(job, status)

    async def _end_vanished(self, job: Job, query: JobQuery) -> None:
        # Batch said it ended: its files are taken as they are
        self._ending_vanished = True
        try:
            await super()._end_vanished(job, query)
        finally:
            self._ending_vanished = False

    def _batch_record(self, jid: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """What the latest lists said of the Batch job of ``jid`` and, for an
        array member, of its task: (job entry, task entry), None where unknown
        (or where the entry is of an older job of the same name)."""
        if not jid:
            return None, None
        member = parse_member_jid(jid)
        name = member[0] if member else str(jid)
        entry = self._entry(self._batch_jobs, name)
        task = self._batch_tasks.get(member) if member else None
        return entry, task

    def _figures(self, jid: Any) -> dict[str, Any] | None:
        """Batch's figures for the trial ``jid``: ``wall_s`` and ``host`` with
        their ``sources``; None while Batch has not ended it (not final yet)."""
        entry, task = self._batch_record(jid)
        member = parse_member_jid(jid)
        if member is not None:
            if task is None or task["state"] not in _FINAL_TASK_STATES:
                return None
            figures = _figures_from_task_events(task["events"])
            figures.pop("exit_code", None)
            return figures
        if entry is None or entry["state"] not in _FINAL_JOB_STATES:
            return None
        # one task: the job's events are its task's (its last one names the
        # VM of a task that failed)
        figures: dict[str, Any] = {"sources": {}}
        events = entry.get("events") or []
        run = _duration_seconds(entry.get("run_duration"))
        source = "batch_run_duration"
        if run is None:
            source = "batch_events"
            started = next(
                (_event_time(e.get("eventTime")) for e in events
                 if " to RUNNING" in str(e.get("description", ""))),
                None,
            )
            ended = _event_time(events[-1].get("eventTime")) if events else None
            if started is not None and ended is not None and ended >= started:
                run = ended - started
        if run is not None:
            figures["wall_s"] = round(run, 3)
            figures["sources"]["wall_s"] = source
        found = _INSTANCE_RE.search(entry.get("event") or "")
        if found:
            figures["host"] = found.group(1)
            figures["sources"]["host"] = "batch_events"
        return figures

    def job_usage(self, job: Job) -> dict[str, Any]:
        """What Batch said of ``job``'s trial in the lists the status rounds
        made (never a call of its own): ``wall_s`` from the job's
        ``runDuration`` (a member: its task's events, RUNNING to its end),
        ``host`` from the VM a task event names. Empty while Batch has not
        ended the trial: a later round's list, or the run's end, brings them."""
        figures = self._figures(job.jid)
        return figures or {}

    async def query_usage(self, jids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Batch's figures for the ended trials ``jids``: the round's jobs list
        (one call), and one tasks list per array job they are members of."""
        found = await self._jobs_listed()
        if found is None:
            return {}
        arrays = sorted({m[0] for m in map(parse_member_jid, jids) if m is not None})
        for name in arrays:
            if self._entry(found, name) is not None:
                await self._list_tasks(name)
        usage = {}
        for jid in jids:
            figures = self._figures(jid)
            if figures is not None:
                usage[jid] = figures
        return usage

    def _batch_cause(self, jid: Any) -> str:
        """The cause a reserved exit code of the trial ``jid`` stands for, as
        the latest lists tell; "" when they tell none."""
        entry, task = self._batch_record(jid)
        member = parse_member_jid(jid)
        if member is not None:
            if task is not None and task["state"] in _FINAL_TASK_STATES:
                code = _figures_from_task_events(task["events"]).get("exit_code")
                if code is not None:
                    return RESERVED_EXIT_CAUSES.get(code, "")
            # the job failed by this task: its event says how
            if entry is not None and entry["state"] in _FINAL_JOB_STATES:
                which = _FAILED_TASK_RE.search(entry["event"])
                if which and int(which.group(1)) == member[1]:
                    return _reserved_cause(entry["event"])
            return ""
        if entry is None or entry["state"] not in _FINAL_JOB_STATES:
            return ""
        return _reserved_cause(entry["event"])

    async def exit_cause(self, job: Job, rc: int) -> str:
        """How ``job`` ended: Batch's word first, when a reserved exit code
        says it ended the task itself (50005: ``timeout``; 50001:
        ``preempted``; 50002/50003/50004/50006: ``node_fail``), else the base
        class's reading of ``rc``. A wrapper stopped by a signal (rc 143 or
        137) may have been stopped by Batch at its maxRunDuration: Batch is
        then asked (the round's one jobs list, or one more list for all the
        round's jobs that ended so, never a call per job)."""
        if rc == 0:
            return "ok"
        cause = self._batch_cause(job.jid)
        if not cause and rc in _SIGNALLED_RCS and job.jid:
            await self._refresh_for_causes(job)
            cause = self._batch_cause(job.jid)
        return cause or await super().exit_cause(job, rc)

    async def _refresh_for_causes(self, job: Job) -> None:
        """Ask Batch again about this run's jobs (at most once a status round)
        and about the tasks of ``job``'s array job."""
        member = parse_member_jid(job.jid)
        if not self._in_round or not self._round_refreshed:
            self._round_refreshed = True
            self._round_list = None  # the list may predate the end: ask anew
            await self._jobs_listed()
        if member is not None and member[0] not in self._round_tasks_listed:
            if self._in_round:
                self._round_tasks_listed.add(member[0])
            await self._list_tasks(member[0], fresh=True)
