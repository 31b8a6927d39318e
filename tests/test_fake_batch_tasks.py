"""The loopback Batch API (``scripts/fake_batch_api.py``) runs task groups of
several tasks as Google Cloud Batch does, driven by the real ``gcloud`` CLI.

A job's ``taskGroups[0].taskCount`` N gives N tasks, at most ``parallelism`` of
them running at once, each with ``BATCH_TASK_INDEX`` (0..N-1), ``BATCH_TASK_COUNT``
and the job's env; the job is SUCCEEDED when every task succeeded and FAILED when
any failed; ``gcloud batch tasks list`` shows each task's state.

Needs ``bash scripts/gbatch.sh start``: skipped with the reason when it is down,
failed under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.realparts import part_env, require

GCLOUD_TIMEOUT = 120


@pytest.fixture
def batch(monkeypatch) -> dict:
    require("gbatch")
    env = part_env("gbatch")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def job_names(batch):
    """Names of the jobs a test submits; deleted from the fake afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        request = urllib.request.Request(
            batch["FAKE_BATCH_API"] + job_path(batch, name), method="DELETE"
        )
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except (urllib.error.URLError, OSError):
            pass


def job_path(env: dict, name: str) -> str:
    return (
        f"/v1/projects/{env['CLOUDSDK_CORE_PROJECT']}/locations/"
        f"{env['CLOUDSDK_BATCH_LOCATION']}/jobs/{name}"
    )


def fake_job(env: dict, name: str) -> dict:
    """The job resource straight from the fake (cheaper than a gcloud call)."""
    with urllib.request.urlopen(env["FAKE_BATCH_API"] + job_path(env, name), timeout=30) as answer:
        return json.loads(answer.read())


def gcloud(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["gcloud", *args], capture_output=True, text=True, timeout=GCLOUD_TIMEOUT, env=os.environ
    )
    assert proc.returncode == 0, f"gcloud {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc


def submit(env: dict, tmp_path: Path, names: list[str], script: str, **group) -> str:
    """``gcloud batch jobs submit`` of a one-runnable job; its name."""
    name = f"tasks-{uuid.uuid4().hex[:12]}"
    config = {
        "taskGroups": [
            {
                **group,
                "taskSpec": {
                    "runnables": [{"script": {"text": script}}],
                    "environment": {"variables": {"JOB_LEVEL_VAR": "from-the-job"}},
                },
            }
        ],
        "labels": {"purpose": "fake-batch-tasks-test"},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    names.append(name)
    out = gcloud(
        "batch", "jobs", "submit", name, "--config", str(path),
        "--location", env["CLOUDSDK_BATCH_LOCATION"], "--format", "json",
    )
    assert json.loads(out.stdout)["name"].endswith(f"/jobs/{name}")
    return name


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def wait_end(env: dict, name: str, timeout: float = 60) -> dict:
    return wait_for(
        lambda: (job := fake_job(env, name))["status"]["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")
        and job,
        timeout,
        f"job {name} to end",
    )


def tasks_list(env: dict, name: str) -> list[dict]:
    """``gcloud batch tasks list --job NAME --location L``, as JSON, by index."""
    out = gcloud(
        "batch", "tasks", "list", "--job", name,
        "--location", env["CLOUDSDK_BATCH_LOCATION"], "--format", "json",
    )
    tasks = json.loads(out.stdout)
    return sorted(tasks, key=lambda task: int(task["name"].rsplit("/", 1)[1]))


def states(tasks: list[dict]) -> list[str]:
    return [task["status"]["state"] for task in tasks]


def exit_codes(task: dict) -> list[int]:
    return [
        event["taskExecution"]["exitCode"]
        for event in task["status"].get("statusEvents") or []
        if "taskExecution" in event
    ]


def describe_state(env: dict, name: str) -> str:
    out = gcloud(
        "batch", "jobs", "describe", name,
        "--location", env["CLOUDSDK_BATCH_LOCATION"], "--format", "value(status.state)",
    )
    return out.stdout.strip()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end before a start at a tie)."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in points:
        running += step
        most = max(most, running)
    return most


# A task: records its index, count and the job's env, then its start time; waits
# for the test's go-ahead file (so the test sees it RUNNING); records its end.
GATED_TASK = r"""
out={folder}/task-$BATCH_TASK_INDEX
echo "index=$BATCH_TASK_INDEX count=$BATCH_TASK_COUNT job=$JOB_LEVEL_VAR" > "$out"
echo "start=$(date +%s.%N)" >> "$out"
for _ in $(seq 1 600); do [ -e {folder}/go ] && break; sleep 0.05; done
sleep 0.3
echo "end=$(date +%s.%N)" >> "$out"
"""


def read_record(path: Path) -> dict[str, str]:
    record = {}
    for line in path.read_text().split():
        key, _, value = line.partition("=")
        record[key] = value
    return record


def test_batch_tasks_three_run_at_most_two_at_once_with_their_index(batch, job_names, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    name = submit(
        batch, tmp_path, job_names, GATED_TASK.format(folder=folder), taskCount="3", parallelism="2"
    )

    # Tasks 0 and 1 start and wait for the go-ahead; task 2 must wait for a slot.
    wait_for(
        lambda: all((folder / f"task-{i}").exists() and "start=" in (folder / f"task-{i}").read_text()
                    for i in (0, 1)),
        60,
        "tasks 0 and 1 to start",
    )
    time.sleep(1.0)
    assert not (folder / "task-2").exists(), "a third task started with parallelism 2"
    assert fake_job(batch, name)["status"]["state"] == "RUNNING"
    assert states(tasks_list(batch, name)) == ["RUNNING", "RUNNING", "PENDING"]
    assert not (folder / "task-2").exists()

    (folder / "go").touch()
    job = wait_end(batch, name)
    assert job["status"]["state"] == "SUCCEEDED"
    assert job["taskGroups"][0]["taskCount"] == "3"
    assert job["taskGroups"][0]["parallelism"] == "2"
    assert job["status"]["taskGroups"]["group0"]["counts"] == {"SUCCEEDED": "3"}

    records = {i: read_record(folder / f"task-{i}") for i in range(3)}
    assert {r["index"] for r in records.values()} == {"0", "1", "2"}
    assert all(r["count"] == "3" and r["job"] == "from-the-job" for r in records.values())
    intervals = [(float(r["start"]), float(r["end"])) for r in records.values()]
    assert max_overlap(intervals) == 2
    # task 2 started only once one of the first two had ended
    assert float(records[2]["start"]) >= min(float(records[0]["end"]), float(records[1]["end"]))

    tasks = tasks_list(batch, name)
    assert [task["name"].rsplit("/", 1)[1] for task in tasks] == ["0", "1", "2"]
    assert all(f"/jobs/{name}/taskGroups/group0/tasks/" in task["name"] for task in tasks)
    assert states(tasks) == ["SUCCEEDED"] * 3
    assert all(exit_codes(task) and set(exit_codes(task)) == {0} for task in tasks)
    for task in tasks:
        changes = [e.get("taskState") for e in task["status"]["statusEvents"] if e["type"] == "STATUS_CHANGED"]
        assert changes == ["RUNNING", "SUCCEEDED"]
    assert describe_state(batch, name) == "SUCCEEDED"


def test_batch_tasks_one_failing_task_fails_the_job(batch, job_names, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    script = (
        f'echo "$BATCH_TASK_INDEX" > {folder}/ran-$BATCH_TASK_INDEX\n'
        '[ "$BATCH_TASK_INDEX" = 1 ] && exit 3\n'
        "exit 0\n"
    )
    name = submit(batch, tmp_path, job_names, script, taskCount="3")  # parallelism: all
    job = wait_end(batch, name)
    assert job["status"]["state"] == "FAILED"
    assert job["taskGroups"][0]["parallelism"] == "3"  # the default: all at once
    assert job["status"]["taskGroups"]["group0"]["counts"] == {"FAILED": "1", "SUCCEEDED": "2"}
    assert "task 1 exited with code 3" in job["status"]["statusEvents"][-1]["description"]
    # a failed task does not stop the others
    assert sorted(p.name for p in folder.iterdir()) == ["ran-0", "ran-1", "ran-2"]

    tasks = tasks_list(batch, name)
    assert states(tasks) == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert set(exit_codes(tasks[1])) == {3}
    assert set(exit_codes(tasks[0])) == set(exit_codes(tasks[2])) == {0}
    assert describe_state(batch, name) == "FAILED"


def test_batch_tasks_a_job_without_task_count_has_one_task(batch, job_names, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    script = f'echo "$BATCH_TASK_INDEX $BATCH_TASK_COUNT $JOB_LEVEL_VAR" > {folder}/env\n'
    name = submit(batch, tmp_path, job_names, script)
    job = wait_end(batch, name)
    assert job["status"]["state"] == "SUCCEEDED"
    assert (job["taskGroups"][0]["taskCount"], job["taskGroups"][0]["parallelism"]) == ("1", "1")
    assert job["status"]["taskGroups"]["group0"]["counts"] == {"SUCCEEDED": "1"}
    assert (folder / "env").read_text().split() == ["0", "1", "from-the-job"]
    tasks = tasks_list(batch, name)
    assert [task["name"].rsplit("/", 1)[1] for task in tasks] == ["0"]
    assert states(tasks) == ["SUCCEEDED"]
