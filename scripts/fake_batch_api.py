"""A fake of the Google Cloud Batch REST API (v1) on loopback, for ``gcloud batch``.

No real Batch service is reachable from the test machines, so this server stands
in for it; the ``gcloud`` CLI that talks to it is the real one (pointed here with
``CLOUDSDK_API_ENDPOINT_OVERRIDES_BATCH``).  It is started by
``scripts/gbatch.sh start``.

What it does, like the service:
- ``jobs.create`` (submit), ``get`` (describe), ``list``, ``delete``, ``cancel``
  and ``taskGroups.tasks.list/get``; errors in Google's JSON error format, so
  gcloud prints them and exits 1.
- Job ids are checked against Batch's rule; an id in use gives 409 ALREADY_EXISTS
  (also while the old job's deletion is in progress).
- Jobs move QUEUED -> SCHEDULED -> RUNNING -> SUCCEEDED/FAILED; cancel goes through
  CANCELLATION_IN_PROGRESS to CANCELLED; delete through DELETION_IN_PROGRESS to gone.
- Task groups run several tasks, as the service does: ``taskGroups[0].taskCount``
  N tasks (default 1; the length of ``taskEnvironments`` when that is given), at
  most ``parallelism`` of them at once (default: all N), in index order.  Each gets
  ``BATCH_TASK_INDEX`` (0..N-1), ``BATCH_TASK_COUNT``, its ``taskEnvironments``
  entry and the job's own env.  A failed task does not stop the others.  The job is
  RUNNING while its tasks run, then SUCCEEDED when every task succeeded and FAILED
  when any failed (the documented meaning of those job states).
  ``taskGroups.tasks.list`` (``gcloud batch tasks list``) gives each task's
  ``name`` (``.../taskGroups/group0/tasks/<index>``) and ``status.state``
  (PENDING, RUNNING, SUCCEEDED, FAILED) with its statusEvents;
  ``status.taskGroups.group0.counts`` in the job counts tasks by state.
  A cancelled or deleted job starts no more tasks and kills the running ones
  (their states are left as they were).
- Each task really runs, on this machine: each runnable (``script.text``,
  ``script.path``, or a container's ``entrypoint`` + ``commands``, run without the
  image) in order, in a private mount namespace where every GCS volume
  (``gcs.remotePath``) is bind-mounted at its ``mountPath``.  A volume is a local
  mirror of the bucket prefix, kept in sync with the GCS emulator (at
  ``STORAGE_EMULATOR_HOST``) the way gcsfuse would: changed objects are fetched
  before a task starts, files the task writes are uploaded every
  ``--sync-interval`` seconds and once more before the job is reported finished,
  in the order they were written (inotify; gcsfuse uploads a file when its
  writer closes it, so a reader never sees a later file before an earlier one).

Test knobs, read from the job's labels (so tests pass them through the scheduler's
``labels`` option):
- ``fake-batch-behaviour: never-start`` stays QUEUED until cancelled or deleted;
  ``fail-before-run`` goes to FAILED without running anything (no VM).
- ``fake-batch-quota-errors: N`` / ``fake-batch-deadline-errors: N``: the first N
  create requests for that job id fail with 429 RESOURCE_EXHAUSTED / 504
  DEADLINE_EXCEEDED.
- ``fake-batch-queue-seconds: N``: the job stays QUEUED N seconds (default
  ``--step-seconds``), as real jobs wait for a VM.
- ``fake-batch-vm-lost-after: N`` with ``fake-batch-vm-lost-code: C``: N
  seconds into each task its "VM" goes away: every process of the task is
  SIGKILLed (nothing more it wrote is uploaded, as on a VM that is gone) and
  the task FAILED with Batch's reserved exit code C (50001 Spot VM preemption,
  50002 VM reporting timeout, 50003 VM rebooted, 50004 task unresponsive,
  50006 VM recreated; https://cloud.google.com/batch/docs/troubleshooting).

Like the service, ``taskSpec.maxRunDuration`` (``"<seconds>s"``) is enforced:
a task running longer is FAILED with exit code 50005 and its processes are
stopped (SIGTERM, SIGKILL 2 s later).  Task events from the time a task has a
"VM" say where it runs (``on zones/<zone>/instances/<this host's name>``), a
job that failed says which task failed and its event (``Specifically, task
with index N failed due to the following task event: "..."``), and the job's
``status.runDuration`` is the time it spent RUNNING.

``GET /fake/stats`` returns request counts (API requests by method, storage
requests the fake itself made), for benchmarks.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import itertools
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# Batch: 1-63 characters, lowercase letters, digits and hyphens, starting with a
# letter and not ending with a hyphen.
JOB_ID_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
JOBS_PATH_RE = re.compile(
    r"^/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/jobs"
    r"(?:/(?P<job>[^/:]+)(?P<rest>[^?]*))?$"
)
TASKS_REST_RE = re.compile(r"^/taskGroups/(?P<group>[^/]+)/tasks(?:/(?P<task>\d+))?$")
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")
# parallelism defaults to min(taskCount, the parallel-tasks-per-job limit)
MAX_PARALLEL_TASKS = 1000
# Batch's reserved exit codes the fake can give (fake-batch-vm-lost-code), and
# the exit code of a task over its maxRunDuration
VM_LOSS_REASONS = {
    50001: "Spot VM preemption",
    50002: "VM reporting timeout",
    50003: "VM rebooted during task execution",
    50004: "task and VM unresponsive",
    50006: "VM recreated during task execution",
}
MAX_RUN_DURATION_EXIT = 50005
_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)s$")


def parse_duration(value: object) -> float | None:
    """Seconds of a protobuf Duration in JSON (``"3600s"``, ``"1.5s"``); None
    when not given; ApiError when not a duration."""
    if value in (None, ""):
        return None
    match = _DURATION_RE.match(str(value))
    if not match:
        raise ApiError(400, "INVALID_ARGUMENT", f"Invalid duration {value!r}: expected e.g. '3600s'")
    return float(match.group(1))


def format_duration(seconds: float) -> str:
    text = f"{max(seconds, 0.0):.6f}".rstrip("0").rstrip(".")
    return f"{text}s"


def now_rfc3339(at: float | None = None) -> str:
    moment = (
        datetime.datetime.now(datetime.timezone.utc)
        if at is None
        else datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
    )
    return moment.isoformat().replace("+00:00", "Z")


def task_count_and_parallelism(group: dict) -> tuple[int, int]:
    """A task group's (taskCount, parallelism), with the service's defaults:
    taskCount 1 (or the length of taskEnvironments, which then rules), and
    parallelism min(taskCount, the per-job limit).  int64 fields come as strings."""
    envs = group.get("taskEnvironments") or []
    try:
        count = len(envs) if envs else int(group.get("taskCount") or 1)
        parallelism = int(group.get("parallelism") or 0) or count
    except (TypeError, ValueError) as exc:
        raise ApiError(
            400, "INVALID_ARGUMENT", f"taskGroups[0].taskCount and parallelism must be integers: {exc}"
        )
    if count < 1:
        raise ApiError(400, "INVALID_ARGUMENT", f"taskGroups[0].taskCount must be positive, got {count}")
    if parallelism < 1:
        raise ApiError(
            400, "INVALID_ARGUMENT", f"taskGroups[0].parallelism must be positive, got {parallelism}"
        )
    return count, min(parallelism, count, MAX_PARALLEL_TASKS)


class ApiError(Exception):
    """An error answered to the client in Google's JSON error format."""

    def __init__(self, code: int, status: str, message: str):
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


class Stats:
    """Thread-safe request counters."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.api: Counter = Counter()
        self.storage: Counter = Counter()
        self.verbose = False

    def count_api(self, method: str) -> None:
        with self.lock:
            self.api[method] += 1

    def count_storage(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.storage[what] += n

    def snapshot(self) -> dict:
        with self.lock:
            return {"api": dict(self.api), "storage": dict(self.storage)}


class WriteOrder:
    """The order in which files under the mirrors were last written, from
    inotify: the order gcsfuse uploads them in (it uploads a file when a
    writer closes it, and a command's output when the command exits, before
    its wrapper writes the rc and the status).

    File times cannot tell it: the kernel stamps them from a clock that ticks
    every few milliseconds, so a wrapper's last files (usage record, rc,
    status) usually share one mtime. Sorted by name within that tie, the
    status went up before the usage record, and a manager that saw the final
    status found no usage record yet (a flaky test; a real mount has no such
    tie). A thread takes the events in as they come, so the kernel's queue
    does not overflow between syncs. Files it saw no write of (written before
    their folder was watched; no inotify here) rank first, by mtime.
    """

    _MODIFY, _MOVED_TO, _CREATE = 0x2, 0x80, 0x100
    _Q_OVERFLOW, _IGNORED, _ISDIR = 0x4000, 0x8000, 0x40000000
    _MASK = _MODIFY | _MOVED_TO | _CREATE
    _EVENT = struct.Struct("iIII")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dirs: dict[int, str] = {}  # watch descriptor -> directory
        self.rank: dict[str, int] = {}  # file path -> when it was last written
        self._counter = itertools.count(1)
        self._libc = None
        self.fd = -1
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            self.fd = -1
        self._reader: threading.Thread | None = None

    def watch_tree(self, root: Path | str) -> None:
        """Watch ``root`` and every directory under it (a folder watched
        already keeps its watch: the kernel gives back the same one)."""
        if self.fd < 0:
            return
        with self.lock:
            self._watch_tree(str(root))
            if self._reader is None:
                self._reader = threading.Thread(target=self._read_forever, name="write-order", daemon=True)
                self._reader.start()

    def _watch_tree(self, root: str) -> None:
        for dirpath, _dirs, _files in os.walk(root):
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(dirpath), self._MASK)
            if wd >= 0:
                self.dirs[wd] = dirpath

    def _read_forever(self) -> None:
        while True:
            select.select([self.fd], [], [])
            self.drain()

    def drain(self) -> None:
        """Take in every event queued so far (a write before this call is
        queued: the kernel queues its event in the ``write()``)."""
        if self.fd < 0:
            return
        with self.lock:
            while True:
                try:
                    data = os.read(self.fd, 1 << 16)
                except (BlockingIOError, InterruptedError):
                    return
                offset = 0
                while offset + self._EVENT.size <= len(data):
                    wd, mask, _cookie, length = self._EVENT.unpack_from(data, offset)
                    offset += self._EVENT.size
                    name = data[offset:offset + length].split(b"\0", 1)[0]
                    offset += length
                    if mask & self._Q_OVERFLOW:
                        sys.stderr.write(f"{now_rfc3339()} inotify queue overflowed: some writes go unordered\n")
                    folder = self.dirs.get(wd)
                    if mask & self._IGNORED and folder is not None:
                        del self.dirs[wd]  # its folder is gone
                    if folder is None or not name:
                        continue
                    path = os.path.join(folder, os.fsdecode(name))
                    if mask & self._ISDIR:
                        if mask & (self._CREATE | self._MOVED_TO):
                            self._watch_tree(path)
                    else:
                        self.rank[path] = next(self._counter)

    def of(self, path: Path) -> int:
        """When ``path`` was last written, as a rank (0: unknown)."""
        return self.rank.get(str(path), 0)


WRITE_ORDER = WriteOrder()


class BucketMirror:
    """A local copy of one bucket prefix, synced both ways like a gcsfuse mount.

    Several tasks using the same volume share one mirror, as tasks on one VM
    share one gcsfuse mount.  ``entries`` maps a relative path to the object
    generation and the local (size, mtime) seen at the last sync.
    """

    def __init__(self, root: Path, bucket: str, prefix: str, stats: Stats):
        self.root = root
        self.bucket_name = bucket
        self.prefix = prefix.strip("/")
        self.stats = stats
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[int, int, int]] = {}
        self.users = 0
        self._client = None
        root.mkdir(parents=True, exist_ok=True)
        WRITE_ORDER.watch_tree(root)

    @property
    def bucket(self):
        if self._client is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            self._client = storage.Client(
                project="fake-batch", credentials=AnonymousCredentials()
            )
            # every HTTP request the mirror makes, so benchmarks can tell the
            # fake's own storage traffic from the manager's
            self._client._http.hooks["response"].append(
                lambda response, *args, **kwargs: self.stats.count_storage("http_requests")
            )
        return self._client.bucket(self.bucket_name)

    def _log(self, action: str, rel: str) -> None:
        if self.stats.verbose:
            sys.stderr.write(
                f"{now_rfc3339()} [{threading.current_thread().name}] {action} "
                f"gs://{self.bucket_name}/{self._key(rel)}\n"
            )

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _local_sig(self, path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns

    def sync_down(self) -> None:
        """Fetch objects that are new or changed in the bucket; drop deleted ones."""
        with self.lock:
            list_prefix = f"{self.prefix}/" if self.prefix else None
            blobs = list(self.bucket.client.list_blobs(self.bucket_name, prefix=list_prefix))
            self.stats.count_storage("list")
            seen = set()
            for blob in blobs:
                rel = blob.name[len(list_prefix or "") :]
                if not rel or rel.endswith("/"):
                    (self.root / rel).mkdir(parents=True, exist_ok=True)
                    continue
                seen.add(rel)
                local = self.root / rel
                entry = self.entries.get(rel)
                if entry and entry[0] == blob.generation:
                    continue
                if entry and self._local_sig(local) != entry[1:]:
                    continue  # changed here too: this side wins, sync_up sends it
                generation = blob.generation  # a download may reset the blob's fields
                local.parent.mkdir(parents=True, exist_ok=True)
                # into a temp file, then renamed: a task reading the old copy
                # (bash reads its script as it goes) never sees a half-written one
                partial = local.with_name(f".{local.name}.fake-batch-download")
                blob.download_to_filename(str(partial))
                os.replace(partial, local)
                self.stats.count_storage("download")
                self._log("download", rel)
                sig = self._local_sig(local)
                self.entries[rel] = (generation, *sig)
            for rel in list(self.entries):
                if rel in seen:
                    continue
                local = self.root / rel
                if self._local_sig(local) == self.entries[rel][1:]:
                    local.unlink(missing_ok=True)
                    self._log("unlink (gone from bucket)", rel)
                del self.entries[rel]
            # folders fetched now are watched before a task writes in them
            WRITE_ORDER.watch_tree(self.root)

    def sync_up(self) -> None:
        """Upload files written or changed here; delete objects removed here."""
        sync_up_in_write_order([self])

    def changed_files(self) -> tuple[set[str], list[tuple[int, str, Path, tuple[int, int]]]]:
        """(every file here, the changed ones as (mtime_ns, rel, path, sig))."""
        present: set[str] = set()
        changed = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                local = Path(dirpath) / name
                rel = local.relative_to(self.root).as_posix()
                present.add(rel)
                sig = self._local_sig(local)
                entry = self.entries.get(rel)
                if sig is None or (entry and entry[1:] == sig):
                    continue
                changed.append((sig[1], rel, local, sig))
        return present, changed

    def upload(self, rel: str, local: Path, sig: tuple[int, int]) -> None:
        blob = self.bucket.blob(self._key(rel))
        try:
            blob.upload_from_filename(str(local))
        except FileNotFoundError:
            return
        self.stats.count_storage("upload")
        self._log("upload", rel)
        self.entries[rel] = (blob.generation or 0, *sig)

    def delete_gone(self, present: set[str]) -> None:
        """Delete the objects of files removed here."""
        with self.lock:
            for rel in list(self.entries):
                if rel not in present:
                    try:
                        self.bucket.blob(self._key(rel)).delete()
                        self.stats.count_storage("delete")
                        self._log("delete (gone here)", rel)
                    except Exception:  # already gone in the bucket
                        pass
                    del self.entries[rel]


class FakeJob:
    """One Batch job: its resource, state machine and task process."""

    def __init__(self, service: "FakeBatchService", parent: str, job_id: str, body: dict):
        self.service = service
        self.parent = parent
        self.job_id = job_id
        self.name = f"{parent}/jobs/{job_id}"
        self.lock = threading.Lock()
        self.stop_requested = threading.Event()
        self.stop_reason = ""  # "cancel" or "delete"
        self.procs: dict[int, subprocess.Popen] = {}  # running tasks, by index
        self.done = False
        created = now_rfc3339()
        self.resource = dict(body)
        self.resource.update(
            name=self.name,
            uid=f"{job_id[:50]}-{uuid.uuid4().hex[:12]}",
            createTime=created,
            updateTime=created,
        )
        groups = self.resource.setdefault("taskGroups", [{}])
        for index, group in enumerate(groups):
            group["name"] = f"{self.name}/taskGroups/group{index}"
            count, parallelism = task_count_and_parallelism(group)
            group["taskCount"] = str(count)
            group["parallelism"] = str(parallelism)
        self.task_count, self.parallelism = task_count_and_parallelism(groups[0])
        spec = groups[0].get("taskSpec") or {}
        self.max_run_seconds = parse_duration(spec.get("maxRunDuration"))
        labels = body.get("labels") or {}
        try:
            lost_after = labels.get("fake-batch-vm-lost-after")
            self.vm_lost_after = None if lost_after is None else float(lost_after)
            self.vm_lost_code = int(labels.get("fake-batch-vm-lost-code") or 50001)
        except ValueError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", f"fake-batch-vm-lost-* labels: {exc}")
        if self.vm_lost_code not in VM_LOSS_REASONS:
            raise ApiError(
                400, "INVALID_ARGUMENT",
                f"fake-batch-vm-lost-code must be one of {sorted(VM_LOSS_REASONS)}",
            )
        # where the tasks run: this machine stands for the VM
        location = parent.rsplit("/", 1)[-1]
        self.vm = f"zones/{location}-a/instances/{socket.gethostname()}"
        # wall-clock times of the job's move to RUNNING and out of it
        self.running_since: float | None = None
        self.running_until: float | None = None
        self.resource["status"] = {"state": "QUEUED", "statusEvents": []}
        # per task: state, exit code (once it ended on its own), statusEvents
        self.task_states = ["PENDING"] * self.task_count
        self.task_exits: list[int | None] = [None] * self.task_count
        self.task_events: list[list[dict]] = [[] for _ in range(self.task_count)]
        # tasks the service itself ended (maxRunDuration, a lost VM)
        self.task_forced: set[int] = set()
        self._event("STATUS_CHANGED", "Job state is set from  to QUEUED for job " + self.name)

    @property
    def labels(self) -> dict:
        return self.resource.get("labels") or {}

    @property
    def state(self) -> str:
        return self.resource["status"]["state"]

    def _event(self, kind: str, description: str, at: float | None = None) -> None:
        self.resource["status"]["statusEvents"].append(
            {"type": kind, "description": description, "eventTime": now_rfc3339(at)}
        )

    def set_state(self, state: str, description: str = "") -> None:
        with self.lock:
            old = self.state
            if old == state:
                return
            at = time.time()
            if state == "RUNNING":
                self.running_since = at
            elif old == "RUNNING":
                self.running_until = at
            self.resource["status"]["state"] = state
            self.resource["updateTime"] = now_rfc3339(at)
            self._event(
                "STATUS_CHANGED",
                description or f"Job state is set from {old} to {state} for job {self.name}",
                at,
            )
            if state in ("SUCCEEDED", "FAILED"):
                # the job ended: a task that never ended on its own failed with it
                # (no VM, or an internal error)
                for index, task_state in enumerate(self.task_states):
                    if task_state not in ("SUCCEEDED", "FAILED"):
                        self._set_task_state_locked(index, "FAILED")
                self._update_counts_locked()

    def _set_task_state_locked(
        self, index: int, state: str, exit_code: int | None = None, reason: str = ""
    ) -> None:
        old = self.task_states[index]
        self.task_states[index] = state
        # from its start on, a task's events say which VM it is on
        where = f" on {self.vm}" if "RUNNING" in (old, state) else ""
        event: dict = {
            "type": "STATUS_CHANGED",
            "description": f"Task state is updated from {old} to {state}{where}"
            + (f" due to {reason}" if reason else "")
            + (f" with exit code {exit_code}." if exit_code is not None else "."),
            "eventTime": now_rfc3339(),
            "taskState": state,
        }
        if exit_code is not None:
            event["taskExecution"] = {"exitCode": exit_code}
        self.task_events[index].append(event)

    def _update_counts_locked(self) -> None:
        counts = Counter(self.task_states)
        self.resource["status"]["taskGroups"] = {
            "group0": {"counts": {state: str(n) for state, n in sorted(counts.items())}}
        }

    def set_task_state(self, index: int, state: str, exit_code: int | None = None) -> None:
        with self.lock:
            self._set_task_state_locked(index, state, exit_code)
            if exit_code is not None:
                self.task_exits[index] = exit_code
            self.resource["updateTime"] = now_rfc3339()
            self._update_counts_locked()

    def view(self) -> dict:
        with self.lock:
            resource = json.loads(json.dumps(self.resource))
            if self.running_since is not None:
                until = self.running_until if self.running_until is not None else time.time()
                resource["status"]["runDuration"] = format_duration(until - self.running_since)
            return resource

    def failure_description(self) -> str:
        """The FAILED job's event: which task failed and the event it failed with."""
        with self.lock:
            failed = [
                (i, code) for i, (code, state) in enumerate(zip(self.task_exits, self.task_states))
                if code not in (0,) and state == "FAILED"
            ]
            first = failed[0][0] if failed else 0
            task_event = ""
            for event in reversed(self.task_events[first]):
                if event.get("taskState") == "FAILED":
                    task_event = event["description"]
                    break
            old = self.state
        text = f"Job state is set from {old} to FAILED for job {self.name}. Job failed due to task failure."
        if self.task_count > 1 and failed:
            which = ", ".join(f"task {i} exited with code {code}" for i, code in failed)
            text += f" {len(failed)} of {self.task_count} tasks failed: {which}."
        if task_event:
            text += (
                f" Specifically, task with index {first} failed due to the following "
                f'task event: "{task_event}"'
            )
        return text

    def force_task_end(self, index: int, code: int, reason: str) -> None:
        """The service ends task ``index`` itself (a lost VM, maxRunDuration):
        FAILED with ``code`` now, and the job FAILED too when no task is left,
        before the task's processes are stopped (their last files land later)."""
        with self.lock:
            self.task_forced.add(index)
            self.task_exits[index] = code
            self._set_task_state_locked(index, "FAILED", code, reason)
            self.resource["updateTime"] = now_rfc3339()
            self._update_counts_locked()
            over = all(state in ("SUCCEEDED", "FAILED") for state in self.task_states)
        if over and not self.stop_requested.is_set():
            self.set_state("FAILED", self.failure_description())

    def task_view(self, index: int = 0) -> dict:
        if not 0 <= index < self.task_count:
            raise ApiError(404, "NOT_FOUND", f"Task {index} of {self.name} not found")
        with self.lock:
            events = [dict(event) for event in self.task_events[index]]
            status: dict = {"state": self.task_states[index], "statusEvents": events}
            code = self.task_exits[index]
            if code is not None:
                status["statusEvents"].append(
                    {
                        "type": "TASK_EXIT",
                        "description": f"Task exited with code {code}",
                        "eventTime": events[-1]["eventTime"] if events else self.resource["updateTime"],
                        "taskExecution": {"exitCode": code},
                    }
                )
            return {"name": f"{self.name}/taskGroups/group0/tasks/{index}", "status": status}

    def tasks_view(self, page_size: int = 0, page_token: str = "") -> dict:
        try:
            start = int(page_token or 0)
        except ValueError:
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid page token {page_token!r}")
        end = start + page_size if page_size > 0 else self.task_count
        end = min(end, self.task_count)
        answer: dict = {"tasks": [self.task_view(i) for i in range(start, end)]}
        if end < self.task_count:
            answer["nextPageToken"] = str(end)
        return answer

    # -- lifecycle (runs in its own thread) ---------------------------------
    def _pause(self, seconds: float) -> bool:
        """Sleep; True when a cancel or delete came meanwhile."""
        return self.stop_requested.wait(seconds)

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug here must not leave the job RUNNING
            self.set_state("FAILED", f"fake Batch API internal error: {exc!r}")
        finally:
            with self.lock:
                self.done = True
                reason = self.stop_reason
            self._after_stop(reason)

    def _run(self) -> None:
        step = self.service.step_seconds
        behaviour = self.labels.get("fake-batch-behaviour", "")
        try:
            queued = float(self.labels.get("fake-batch-queue-seconds", step))
        except ValueError:
            queued = step
        if self._pause(queued):
            return
        if behaviour == "never-start":
            self.stop_requested.wait()
            return
        self.set_state("SCHEDULED")
        if self._pause(step):
            return
        if behaviour == "fail-before-run":
            self.set_state(
                "FAILED",
                "Job failed before any task ran: no VM could be allocated "
                "(fake-batch-behaviour: fail-before-run)",
            )
            return
        self.set_state("RUNNING")
        self._run_tasks()
        if self.stop_requested.is_set():
            return
        with self.lock:
            codes = list(self.task_exits)
        if all(code == 0 for code in codes):
            self.set_state("SUCCEEDED")
        else:
            self.set_state("FAILED", self.failure_description())

    def _run_tasks(self) -> None:
        """Run the tasks in index order, at most ``parallelism`` at once; a task
        that fails does not stop the others.  Cancel or delete starts no more."""
        pending = iter(range(self.task_count))
        pick = threading.Lock()

        def worker() -> None:
            while not self.stop_requested.is_set():
                with pick:
                    index = next(pending, None)
                if index is None:
                    return
                self._run_task(index)

        workers = min(self.parallelism, self.task_count)
        if workers <= 1:
            worker()
            return
        threads = [
            threading.Thread(target=worker, name=f"job-{self.job_id}-w{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _run_task(self, index: int) -> None:
        with self.lock:
            if self.stop_requested.is_set():
                return
            self._set_task_state_locked(index, "RUNNING")
            self._update_counts_locked()
        code = self._execute(index)
        if self.stop_requested.is_set():
            return  # killed by a cancel or delete: its state is left as it was
        if index in self.task_forced:
            return  # the service ended it (maxRunDuration, a lost VM)
        self.set_task_state(index, "SUCCEEDED" if code == 0 else "FAILED", code)

    def _after_stop(self, reason: str) -> None:
        if reason == "cancel":
            self.set_state("CANCELLED", f"Job {self.name} was cancelled")
        elif reason == "delete":
            time.sleep(self.service.delete_seconds)
            self.service.forget(self)

    def request_stop(self, reason: str) -> None:
        """Cancel or delete: stop the task; the job's thread finishes the move."""
        with self.lock:
            if self.stop_reason == "delete":
                return
            self.stop_reason = reason
            done = self.done
        if done:
            # The job had ended already: only a deletion has anything left to do.
            threading.Thread(target=self._after_stop, args=(reason,), daemon=True).start()
            return
        self.stop_requested.set()
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    # -- running the task for real -------------------------------------------
    def _task_script(self, mounts: list[tuple[Path, str]]) -> str:
        group = self.resource["taskGroups"][0]
        spec = group.get("taskSpec") or {}
        lines = ["set -u"]
        for local, mount_path in sorted(mounts, key=lambda m: len(Path(m[1]).parts)):
            lines.append(f"mkdir -p {shlex.quote(mount_path)}")
            lines.append(f"mount --bind {shlex.quote(str(local))} {shlex.quote(mount_path)} || exit 90")
        spec_env = (spec.get("environment") or {}).get("variables") or {}
        for key, value in spec_env.items():
            lines.append(f"export {key}={shlex.quote(str(value))}")
        for runnable in spec.get("runnables") or []:
            env = (runnable.get("environment") or {}).get("variables") or {}
            prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
            if "script" in runnable:
                script = runnable["script"] or {}
                if script.get("text") is not None:
                    argv = [*prefix, "bash", "-c", script["text"]]
                elif script.get("path"):
                    argv = [*prefix, "bash", script["path"]]
                else:
                    continue
            elif "container" in runnable:
                container = runnable["container"] or {}
                entry = container.get("entrypoint") or ""
                argv = [*prefix, *shlex.split(entry), *(container.get("commands") or [])]
                if not argv:
                    continue
            else:  # barrier and others: nothing to run on one VM
                continue
            command = shlex.join(argv)
            if runnable.get("background"):
                lines.append(f"{command} &")
            elif runnable.get("ignoreExitStatus"):
                lines.append(f"{command} || true")
            else:
                lines.append(f"{command} || exit $?")
        lines.append("exit 0")
        return "\n".join(lines) + "\n"

    def _execute(self, index: int = 0) -> int:
        group = self.resource["taskGroups"][0]
        spec = group.get("taskSpec") or {}
        mounts: list[tuple[Path, str]] = []
        mirrors: list[BucketMirror] = []
        for volume in spec.get("volumes") or []:
            gcs = volume.get("gcs")
            if not gcs or not volume.get("mountPath"):
                continue  # NFS / disks: nothing to emulate on one machine
            remote = gcs.get("remotePath", "").strip("/")
            bucket, _, prefix = remote.partition("/")
            mirror = self.service.mirror(bucket, prefix)
            try:
                mirror.sync_down()
            except Exception as exc:
                self.service.release(mirror)
                for used in mirrors:
                    self.service.release(used)
                with self.lock:
                    self._event("VOLUME", f"cannot mount gs://{remote}: {exc}")
                return 91
            mirrors.append(mirror)
            mounts.append((mirror.root, volume["mountPath"]))

        # one task: the paths of old; several: one workspace and log per task
        suffix = "" if self.task_count == 1 else f"-{index}"
        workspace = self.service.state_dir / "tasks" / f"{self.resource['uid']}{suffix}"
        workspace.mkdir(parents=True, exist_ok=True)
        script = workspace / "task.sh"
        script.write_text(self._task_script(mounts))
        env = dict(os.environ)
        task_envs = group.get("taskEnvironments") or []
        if index < len(task_envs):
            env.update(
                {k: str(v) for k, v in ((task_envs[index] or {}).get("variables") or {}).items()}
            )
        env.update(
            BATCH_TASK_INDEX=str(index),
            BATCH_TASK_COUNT=str(self.task_count),
            BATCH_TASK_RETRY_ATTEMPT="0",
            BATCH_JOB_UID=self.resource["uid"],
        )
        log = open(self.service.state_dir / "logs" / f"{self.resource['uid']}{suffix}.log", "wb")
        proc = None
        vm_lost = False
        try:
            # unshare -m: the bind mounts exist only for this task, like a VM's.
            proc = self.procs[index] = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "bash", str(script)],
                cwd=workspace,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started = time.monotonic()
            # when the service ends the task itself: its maxRunDuration, a lost VM
            ends = []
            if self.max_run_seconds is not None:
                ends.append((started + self.max_run_seconds, "timeout"))
            if self.vm_lost_after is not None:
                ends.append((started + self.vm_lost_after, "vm_lost"))
            ends.sort()
            while True:
                wait = self.service.sync_interval
                if ends:
                    wait = max(0.0, min(wait, ends[0][0] - time.monotonic()))
                try:
                    code = proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if ends and time.monotonic() >= ends[0][0]:
                    _, what = ends.pop(0)
                    if what == "timeout":
                        self.force_task_end(
                            index, MAX_RUN_DURATION_EXIT,
                            f"task execution exceeded its maxRunDuration "
                            f"({format_duration(self.max_run_seconds or 0)})",
                        )
                        stop_session(proc.pid, grace=2.0)
                    else:
                        self.force_task_end(
                            index, self.vm_lost_code, VM_LOSS_REASONS[self.vm_lost_code]
                        )
                        # the VM is gone: everything on it stops at once, and
                        # what it wrote since the last sync never reaches GCS
                        vm_lost = True
                        stop_session(proc.pid, grace=0.0)
                    code = proc.wait()
                    break
                self._sync_up(mirrors)
                if self.stop_requested.is_set():
                    self._kill_task(proc)
        finally:
            log.close()
            if proc is not None:
                self.procs.pop(index, None)
            if not vm_lost:
                self._sync_up(mirrors)
            for mirror in mirrors:
                self.service.release(mirror)
            shutil.rmtree(workspace, ignore_errors=True)
        return code

    def _sync_up(self, mirrors: list[BucketMirror]) -> None:
        try:
            sync_up_in_write_order(mirrors)
        except Exception as exc:  # the emulator hiccuped; the next sync retries
            with self.lock:
                names = ", ".join(f"gs://{m.bucket_name}" for m in mirrors)
                self._event("VOLUME", f"sync to {names} failed: {exc}")

    def _kill_task(self, proc: subprocess.Popen | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (a task's: it was started in one)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def stop_session(sid: int, grace: float) -> None:
    """Stop every process of a task, its commands' own process groups too:
    SIGTERM and ``grace`` seconds to go (0: SIGKILL at once), then SIGKILL."""
    def others() -> list[int]:
        # the task's first process is reaped by its Popen; the rest must go
        return [pid for pid in session_pids(sid) if pid != sid]

    def send(sig: int) -> None:
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    if grace > 0:
        send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not others():
                return
            time.sleep(0.05)
    # SIGKILL until none is left (one forked meanwhile goes in the next pass)
    for _ in range(20):
        send(signal.SIGKILL)
        if not others():
            return
        time.sleep(0.05)


def sync_up_in_write_order(mirrors: list["BucketMirror"]) -> None:
    """Upload the changed files of ``mirrors`` oldest first, across mirrors, as
    gcsfuse uploads each file when it is closed: a reader that sees a job's rc
    file also sees the outputs written before it, whatever volume holds them."""
    # shared mirrors: every task takes their locks in one order (no deadlock)
    unique = sorted(set(mirrors), key=id)
    for mirror in unique:
        mirror.lock.acquire()
    try:
        changes = []
        presents = []
        for mirror in unique:
            present, changed = mirror.changed_files()
            presents.append(present)
            changes.extend((mtime, id(mirror), mirror, rel, local, sig)
                           for mtime, rel, local, sig in changed)
        # in the order they were written (file times share clock ticks)
        WRITE_ORDER.drain()
        changes.sort(key=lambda c: (WRITE_ORDER.of(c[4]), c[0], c[1], c[3]))
        for _mtime, _id, mirror, rel, local, sig in changes:
            mirror.upload(rel, local, sig)
    finally:
        for mirror in unique:
            mirror.lock.release()
    for mirror, present in zip(unique, presents):
        mirror.delete_gone(present)


class FakeBatchService:
    """All jobs, by name, and the shared bucket mirrors."""

    def __init__(self, state_dir: Path, step_seconds: float, delete_seconds: float, sync_interval: float):
        self.state_dir = state_dir
        self.step_seconds = step_seconds
        self.delete_seconds = delete_seconds
        self.sync_interval = sync_interval
        self.stats = Stats()
        self.lock = threading.Lock()
        self.jobs: dict[str, FakeJob] = {}
        self.create_attempts: Counter = Counter()
        self.mirrors: dict[tuple[str, str], BucketMirror] = {}
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)
        (state_dir / "tasks").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(state_dir / "mirrors", ignore_errors=True)

    def mirror(self, bucket: str, prefix: str) -> BucketMirror:
        key = (bucket, prefix.strip("/"))
        with self.lock:
            mirror = self.mirrors.get(key)
            if mirror is None:
                root = self.state_dir / "mirrors" / uuid.uuid4().hex
                mirror = self.mirrors[key] = BucketMirror(root, bucket, prefix, self.stats)
            mirror.users += 1
            return mirror

    def release(self, mirror: BucketMirror) -> None:
        with self.lock:
            mirror.users -= 1

    def forget(self, job: FakeJob) -> None:
        with self.lock:
            if self.jobs.get(job.name) is job:
                del self.jobs[job.name]

    def get(self, parent: str, job_id: str) -> FakeJob:
        with self.lock:
            job = self.jobs.get(f"{parent}/jobs/{job_id}")
        if job is None:
            raise ApiError(404, "NOT_FOUND", f'Resource "{parent}/jobs/{job_id}" was not found')
        return job

    def create(self, parent: str, job_id: str | None, body: dict) -> dict:
        if not job_id:
            job_id = f"job-{uuid.uuid4().hex[:12]}"
        if not JOB_ID_RE.match(job_id):
            raise ApiError(
                400,
                "INVALID_ARGUMENT",
                f"Job id {job_id!r} is invalid: it must match "
                "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$",
            )
        runnables = (
            ((body.get("taskGroups") or [{}])[0].get("taskSpec") or {}).get("runnables") or []
        )
        if not runnables:
            raise ApiError(
                400, "INVALID_ARGUMENT", "taskGroups[0].taskSpec.runnables must not be empty"
            )
        labels = body.get("labels") or {}
        with self.lock:
            self.create_attempts[(parent, job_id)] += 1
            attempt = self.create_attempts[(parent, job_id)]
            for label, code, status, message in (
                (
                    "fake-batch-quota-errors",
                    429,
                    "RESOURCE_EXHAUSTED",
                    "Quota exceeded for quota metric 'Job create requests' of service "
                    "'batch.googleapis.com' (fake)",
                ),
                (
                    "fake-batch-deadline-errors",
                    504,
                    "DEADLINE_EXCEEDED",
                    "Deadline exceeded while creating the job (fake)",
                ),
            ):
                if attempt <= int(labels.get(label, "0") or 0):
                    raise ApiError(code, status, message)
            name = f"{parent}/jobs/{job_id}"
            if name in self.jobs:
                raise ApiError(409, "ALREADY_EXISTS", f"Job {name} already exists")
            job = self.jobs[name] = FakeJob(self, parent, job_id, body)
        threading.Thread(target=job.run, name=f"job-{job_id}", daemon=True).start()
        return job.view()

    def list(self, parent: str, page_size: int, page_token: str) -> dict:
        with self.lock:
            jobs = sorted(
                (j for j in self.jobs.values() if j.parent == parent or parent.endswith("/-")),
                key=lambda j: j.name,
            )
        start = int(page_token or 0)
        end = start + page_size if page_size > 0 else len(jobs)
        answer: dict = {"jobs": [j.view() for j in jobs[start:end]]}
        if end < len(jobs):
            answer["nextPageToken"] = str(end)
        return answer

    def operation(self, job: FakeJob, verb: str) -> dict:
        return {
            "name": f"{job.parent}/operations/operation-{uuid.uuid4().hex[:16]}",
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.batch.v1.OperationMetadata",
                "createTime": now_rfc3339(),
                "target": job.name,
                "verb": verb,
                "apiVersion": "v1",
            },
            "done": False,
        }

    def delete(self, job: FakeJob) -> dict:
        if job.state != "DELETION_IN_PROGRESS":
            job.set_state("DELETION_IN_PROGRESS")
            job.request_stop("delete")
        return self.operation(job, "delete")

    def cancel(self, job: FakeJob) -> dict:
        if job.state in TERMINAL_STATES:
            raise ApiError(
                400, "FAILED_PRECONDITION", f"Job {job.name} is in state {job.state}"
            )
        if job.state not in ("CANCELLATION_IN_PROGRESS", "DELETION_IN_PROGRESS"):
            job.set_state("CANCELLATION_IN_PROGRESS")
            job.request_stop("cancel")
        return self.operation(job, "cancel")


class Handler(BaseHTTPRequestHandler):
    """Routes the Batch v1 REST paths gcloud uses to the service."""

    service: FakeBatchService  # set on the subclass made in main()
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's name
        sys.stderr.write(f"{now_rfc3339()} {self.command} {self.path} {format % args}\n")

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid JSON payload: {exc}")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path == "/fake/stats" and method == "GET":
                stats = self.service.stats.snapshot()
                with self.service.lock:
                    stats["create_attempts"] = {
                        f"{parent}/jobs/{job_id}": n
                        for (parent, job_id), n in self.service.create_attempts.items()
                    }
                self._reply(200, stats)
                return
            match = JOBS_PATH_RE.match(url.path)
            if not match:
                raise ApiError(404, "NOT_FOUND", f"No such API path: {url.path}")
            parent = f"projects/{match['project']}/locations/{match['location']}"
            job_id, rest = match["job"], match["rest"] or ""
            if job_id is None:
                if method == "POST":
                    self.service.stats.count_api("create")
                    body = self._body()
                    self._reply(200, self.service.create(parent, query.get("jobId", [""])[0], body))
                elif method == "GET":
                    self.service.stats.count_api("list")
                    size = int(query.get("pageSize", ["0"])[0] or 0)
                    token = query.get("pageToken", [""])[0]
                    self._reply(200, self.service.list(parent, size, token))
                else:
                    raise ApiError(405, "INVALID_ARGUMENT", f"{method} is not allowed here")
                return
            if rest == "" and method == "GET":
                self.service.stats.count_api("get")
                self._reply(200, self.service.get(parent, job_id).view())
            elif rest == "" and method == "DELETE":
                self.service.stats.count_api("delete")
                self._reply(200, self.service.delete(self.service.get(parent, job_id)))
            elif rest == ":cancel" and method == "POST":
                self.service.stats.count_api("cancel")
                self._body()
                self._reply(200, self.service.cancel(self.service.get(parent, job_id)))
            elif TASKS_REST_RE.match(rest) and method == "GET":
                self.service.stats.count_api("tasks")
                job = self.service.get(parent, job_id)
                task = TASKS_REST_RE.match(rest)["task"]
                if task is None:
                    size = int(query.get("pageSize", ["0"])[0] or 0)
                    token = query.get("pageToken", [""])[0]
                    self._reply(200, job.tasks_view(size, token))
                else:
                    self._reply(200, job.task_view(int(task)))
            else:
                raise ApiError(404, "NOT_FOUND", f"No such API path: {method} {url.path}")
        except ApiError as err:
            self._reply(err.code, err.body())
        except Exception as exc:  # keep serving; tell the client what broke
            self._reply(500, ApiError(500, "INTERNAL", f"fake Batch API: {exc!r}").body())

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18089)
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/xqute-infra/gbatch"))
    parser.add_argument("--step-seconds", type=float, default=0.2,
                        help="time in QUEUED and in SCHEDULED before a task runs")
    parser.add_argument("--delete-seconds", type=float, default=1.0,
                        help="time a deleted job stays in DELETION_IN_PROGRESS")
    parser.add_argument("--sync-interval", type=float, default=0.5,
                        help="seconds between uploads of files a running task wrote")
    parser.add_argument("--verbose", action="store_true",
                        help="log every file the bucket mirrors fetch, upload or delete")
    args = parser.parse_args(argv)
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        sys.exit("fake_batch_api.py: STORAGE_EMULATOR_HOST is not set (GCS emulator address)")
    service = FakeBatchService(
        args.state_dir, args.step_seconds, args.delete_seconds, args.sync_interval
    )
    service.stats.verbose = args.verbose
    handler = type("BoundHandler", (Handler,), {"service": service})
    server = ThreadingHTTPServer((args.host, args.port), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"fake Batch API on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        # Leave no task behind: they run in their own sessions.
        jobs = list(service.jobs.values())
        for job in jobs:
            job.request_stop("delete")
        time.sleep(0.5)
        for job in jobs:
            for proc in list(job.procs.values()):
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


if __name__ == "__main__":
    main()
