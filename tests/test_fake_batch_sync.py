"""The loopback Batch API's bucket mirror (``scripts/fake_batch_api.py``)
uploads what a task wrote in the order it was written, as gcsfuse does.

No emulator is needed: the uploads are recorded, not made. The order matters
because a manager takes a job's final status as the sign that its other files
(usage record, rc, output) are there. Files written within one clock tick share
an mtime, and the mirror used to break that tie by name, which put
``job.status`` before ``job.usage.raw`` (a flaky gbatch usage test in CI).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fake_batch_api.py"


@pytest.fixture(scope="module")
def fake():
    spec = importlib.util.spec_from_file_location("fake_batch_api_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    order = getattr(module, "WRITE_ORDER", None)
    if order is not None and order.fd < 0:
        pytest.skip("no inotify here: the mirror orders uploads by file times alone")
    return module


def recording_mirror(fake, root: Path):
    uploads: list[str] = []

    class RecordingMirror(fake.BucketMirror):
        def upload(self, rel, local, sig):
            uploads.append(rel)
            self.entries[rel] = (1, *sig)

    return RecordingMirror(root, "bucket", "wd", fake.Stats()), uploads


def test_files_of_one_mtime_are_uploaded_in_the_order_they_were_written(fake, tmp_path):
    mirror, uploads = recording_mirror(fake, tmp_path / "mirror")
    metadir = mirror.root / "0"
    metadir.mkdir()
    mirror.sync_up()  # the task's folder, as a fetch from the bucket makes it
    # a wrapper's end: output, usage record, rc, then the final status
    order = ["job.stdout", "job.usage.raw", "job.rc", "job.status"]
    for name in order:
        (metadir / name).write_text(name)
    tick = os.stat(metadir / "job.stdout").st_mtime_ns
    for name in order:  # one clock tick for all (times do not touch the order)
        os.utime(metadir / name, ns=(tick, tick))
    mirror.sync_up()
    assert uploads == [f"0/{name}" for name in order]


def test_the_write_order_wins_over_file_times(fake, tmp_path):
    """File times need not follow the writes (coarse ticks, a clock set back,
    a fine-grained stamp beside coarse ones): what inotify saw decides."""
    mirror, uploads = recording_mirror(fake, tmp_path / "mirror")
    order = ["job.usage.raw", "job.rc", "job.status"]
    for name in order:
        (mirror.root / name).write_text(name)
    tick = os.stat(mirror.root / "job.rc").st_mtime_ns
    for back, name in enumerate(order):  # the later written, the older it looks
        os.utime(mirror.root / name, ns=(tick - back * 1000, tick - back * 1000))
    mirror.sync_up()
    assert uploads == order


def test_a_later_write_to_a_file_moves_it_after_the_others(fake, tmp_path):
    mirror, uploads = recording_mirror(fake, tmp_path / "mirror")
    (mirror.root / "a").write_text("1")
    (mirror.root / "b").write_text("1")
    with open(mirror.root / "a", "a") as fh:  # written again, last
        fh.write("2")
    tick = os.stat(mirror.root / "a").st_mtime_ns
    for name in "ab":
        os.utime(mirror.root / name, ns=(tick, tick))
    mirror.sync_up()
    assert uploads == ["b", "a"]
