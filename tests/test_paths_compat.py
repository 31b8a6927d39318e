"""What 2.x clients rely on about mounts and paths: ``utils.sanitize_mounts``'s
layout and checks, SpecPath/MountedPath equality and hashing, ``MountedPath``'s
positional ``spec`` and ``os.fspath()`` of cloud paths."""

from __future__ import annotations

import os
import pickle
from pathlib import Path, PurePosixPath

import pytest
from panpath import GSPath, LocalPath, PanPath

from xqute import defaults
from xqute.path import (
    MountedGSPath,
    MountedLocalPath,
    MountedPath,
    SpecGSPath,
    SpecPath,
    cloud_cache_path,
    keep_local_copy,
)
from xqute.utils import sanitize_mounts

ROOT = "/mnt/disks"
SCHEMES = ["gs", "s3", "az"]


# ------------------------------------------------------------ sanitize_mounts
async def test_sanitize_mounts_returns_pairs_and_named_envs(tmp_path):
    pairs, named = await sanitize_mounts(f"{tmp_path}:/data", ROOT)
    assert pairs == [(PanPath(str(tmp_path)), Path("/data"))]
    host, inside = pairs[0]
    assert isinstance(host, LocalPath) and isinstance(inside, PurePosixPath)
    assert named == {}
    assert await sanitize_mounts(None, ROOT) == ([], {})
    assert await sanitize_mounts([], ROOT) == ([], {})
    pairs, _ = await sanitize_mounts(["gs://bucket/ref:/mnt/disks/ref"], ROOT)
    assert pairs == [(GSPath("gs://bucket/ref"), Path("/mnt/disks/ref"))]
    assert isinstance(pairs[0][0], GSPath)


@pytest.mark.parametrize("suffix", ["", "/"])
async def test_named_folder_goes_to_exactly_named_mounts_name(tmp_path, suffix):
    data = tmp_path / "data dir"
    data.mkdir()
    pairs, named = await sanitize_mounts([f"DATA={data}{suffix}"], ROOT)
    # not <root>/NAMED_MOUNTS/DATA/data dir
    assert pairs == [(PanPath(str(data)), Path("/mnt/disks/NAMED_MOUNTS/DATA"))]
    assert named == {"DATA": "/mnt/disks/NAMED_MOUNTS/DATA"}


async def test_named_folder_that_is_not_there_yet_and_a_bucket_folder(tmp_path, monkeypatch):
    async def not_a_file(self):  # no storage request: the bucket is not there
        return False

    monkeypatch.setattr(GSPath, "a_is_file", not_a_file)
    pairs, named = await sanitize_mounts(
        [f"OUT={tmp_path}/later", "REF=gs://bucket/refs"], "/root", named_mounts="NM"
    )
    assert [str(inside) for _, inside in pairs] == ["/root/NM/OUT", "/root/NM/REF"]
    assert named == {"OUT": "/root/NM/OUT", "REF": "/root/NM/REF"}


async def test_named_file_mounts_its_folder_and_names_the_file(tmp_path):
    conf = tmp_path / "conf" / "tool.ini"
    conf.parent.mkdir()
    conf.write_text("x=1\n")
    pairs, named = await sanitize_mounts([f"CONF={conf}"], ROOT)
    assert pairs == [(PanPath(str(conf.parent)), Path("/mnt/disks/NAMED_MOUNTS/CONF/conf"))]
    assert named == {"CONF": "/mnt/disks/NAMED_MOUNTS/CONF/conf/tool.ini"}


async def test_identical_mounts_are_kept_once_in_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    pairs, named = await sanitize_mounts(
        [f"{a}:/x", f"{b}:/y", f"{a}/:/x/", f"{a}:/x", f"N={b}", f"N={b}/"], ROOT
    )
    assert [(str(h), str(i)) for h, i in pairs] == [
        (str(a), "/x"),
        (str(b), "/y"),
        (str(b), "/mnt/disks/NAMED_MOUNTS/N"),
    ]
    assert named == {"N": "/mnt/disks/NAMED_MOUNTS/N"}


async def test_one_host_folder_at_two_places_is_kept_twice(tmp_path):
    pairs, _ = await sanitize_mounts([f"{tmp_path}:/x", f"{tmp_path}:/y"], ROOT)
    assert [str(i) for _, i in pairs] == ["/x", "/y"]


@pytest.mark.parametrize(
    "mounts",
    [
        ["/host/a:/x", "/host/b:/x"],
        ["/host/a:/x", "/host/b:/x/"],
        ["gs://bucket/a:/x", "gs://bucket/b:/x"],
        ["N=/host/a", "/host/b:/mnt/disks/NAMED_MOUNTS/N"],
        ["N=/host/a", "N=/host/b"],
    ],
)
async def test_same_inside_path_with_different_hosts_raises(mounts):
    with pytest.raises(ValueError, match="different host paths"):
        await sanitize_mounts(mounts, ROOT)


async def test_one_name_for_two_files_raises(tmp_path):
    (tmp_path / "f1").write_text("1")
    (tmp_path / "f2").write_text("2")
    with pytest.raises(ValueError, match="Named mount N given twice"):
        await sanitize_mounts([f"N={tmp_path}/f1", f"N={tmp_path}/f2"], ROOT)


@pytest.mark.parametrize("outer_first", [True, False])
async def test_nested_mount_at_the_same_place_is_dropped(tmp_path, outer_first):
    outer, inner = f"{tmp_path}:/x", f"{tmp_path}/sub/deeper:/x/sub/deeper"
    mounts = [outer, inner] if outer_first else [inner, outer]
    pairs, _ = await sanitize_mounts(["/other:/o", *mounts], ROOT)
    assert [(str(h), str(i)) for h, i in pairs] == [("/other", "/o"), (str(tmp_path), "/x")]


async def test_nested_bucket_mount_and_nested_in_a_named_one_are_dropped(tmp_path):
    pairs, named = await sanitize_mounts(
        [
            "gs://bucket/sub/dir:/data/sub/dir",
            "gs://bucket:/data",
            f"N={tmp_path}",
            f"{tmp_path}/in:/mnt/disks/NAMED_MOUNTS/N/in",
        ],
        ROOT,
    )
    assert [(str(h), str(i)) for h, i in pairs] == [
        ("gs://bucket", "/data"),
        (str(tmp_path), "/mnt/disks/NAMED_MOUNTS/N"),
    ]
    assert named == {"N": "/mnt/disks/NAMED_MOUNTS/N"}


@pytest.mark.parametrize(
    "mounts",
    [
        ["/host/a:/x", "/host/a/b:/x/c"],  # inside the other at another place
        ["/host/a:/x", "/host/a/b:/y"],  # host nested, inside not
        ["/host/a:/x", "/elsewhere/b:/x/b"],  # inside nested, host not
        ["/host/a:/x", "/host/ab:/xb"],  # a shared prefix is not nesting
    ],
)
async def test_mounts_nested_elsewhere_are_kept(mounts):
    pairs, _ = await sanitize_mounts(mounts, ROOT)
    assert len(pairs) == 2


@pytest.mark.parametrize("mount", ["bad", "gs://bucket/dir", ":/x", "/host:", "N=", ""])
async def test_invalid_mounts_raise(mount):
    with pytest.raises(ValueError, match="Invalid"):
        await sanitize_mounts([mount], ROOT)


# ------------------------------------------------------- equality and hashing
@pytest.mark.parametrize("where", ["/data/x.txt", "gs://bucket/x.txt", "s3://bucket/x.txt"])
def test_spec_and_mounted_paths_with_the_same_string_are_equal(where):
    spec, mounted = SpecPath(where), MountedPath(where)
    assert spec == mounted and mounted == spec
    assert not (spec != mounted) and not (mounted != spec)
    assert hash(spec) == hash(mounted)
    assert len({spec, mounted}) == 1
    assert {spec: 1}[mounted] == 1 and {mounted: 2}[spec] == 2
    # whatever either side is paired with
    paired_spec = SpecPath(where, mounted="/mnt/disks/x.txt")
    paired_mounted = MountedPath(where, spec="/elsewhere/x.txt")
    assert paired_spec == mounted and mounted == paired_spec
    assert paired_spec == paired_mounted and paired_mounted == paired_spec
    assert hash(paired_spec) == hash(paired_mounted) == hash(spec)
    # other strings differ
    assert SpecPath(where + ".bak") != mounted and mounted != SpecPath(where + ".bak")


def test_equality_within_one_side_still_includes_the_pair():
    a = SpecPath("/data/x", mounted="/mnt/x")
    assert a == SpecPath("/data/x", mounted="/mnt/x")
    assert a != SpecPath("/data/x", mounted="/elsewhere/x")
    assert a != SpecPath("/data/x")
    assert MountedPath("/mnt/x", spec="/data/x") != MountedPath("/mnt/x", spec="/d2/x")
    # equal objects hash alike, after a pickle round trip too
    restored = pickle.loads(pickle.dumps(a))
    assert restored == a and hash(restored) == hash(a)
    assert str(restored.mounted) == "/mnt/x"


def test_mounted_path_takes_spec_as_second_positional_argument():
    mounted = MountedPath("/mnt/disks/x", "/data/x")
    assert isinstance(mounted, MountedLocalPath)
    assert str(mounted) == "/mnt/disks/x"
    assert mounted.is_mounted()
    assert str(mounted.spec) == "/data/x" and str(mounted.spec.mounted) == "/mnt/disks/x"
    assert mounted == MountedPath("/mnt/disks/x", spec="/data/x")
    # a bucket on either side
    cloud = MountedPath("/mnt/disks/ref", "gs://bucket/ref")
    assert isinstance(cloud.spec, SpecGSPath) and str(cloud.spec) == "gs://bucket/ref"
    assert isinstance(MountedPath("gs://b/k", "/local/k"), MountedGSPath)
    # None or the same place: not mounted
    assert not MountedPath("/a", None).is_mounted()
    assert str(MountedPath("/a", None)) == "/a"
    assert not MountedPath("/a", "/a").is_mounted()
    with pytest.raises(TypeError):
        MountedPath("/a", "/b", "/c")


# ------------------------------------------------------------ os.fspath
@pytest.mark.parametrize("scheme", SCHEMES)
def test_fspath_of_a_cloud_path_is_its_cache_path(scheme, monkeypatch, tmp_path):
    monkeypatch.delenv("XQUTE_CLOUD_FSPATH", raising=False)
    monkeypatch.setattr(defaults, "DEFAULT_CLOUD_FSPATH", str(tmp_path / "default"))
    url = f"{scheme}://bucket/run/x.txt"
    expected = str(tmp_path / "default" / scheme / "bucket" / "run" / "x.txt")
    for path in (
        SpecPath(url),
        MountedPath(url),
        SpecPath(url, mounted="/mnt/disks/run/x.txt").mounted.spec,
        MountedPath(url, "/local/x.txt"),
    ):
        assert os.fspath(path) == expected
        assert str(path) == url  # the URL itself is unchanged
    bucket = SpecPath(f"{scheme}://bucket")
    assert os.fspath(bucket) == str(tmp_path / "default" / scheme / "bucket")
    # the executor's side of a bucket mounted locally is a plain local path
    assert os.fspath(SpecPath(url, mounted="/mnt/disks/x.txt").mounted) == "/mnt/disks/x.txt"
    assert os.fspath(SpecPath("/data/x.txt")) == "/data/x.txt"


def test_fspath_reads_xqute_cloud_fspath_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setattr(defaults, "DEFAULT_CLOUD_FSPATH", str(tmp_path / "default"))
    path = SpecPath("gs://bucket/a/b.txt")
    monkeypatch.setenv("XQUTE_CLOUD_FSPATH", str(tmp_path / "env1"))
    assert os.fspath(path) == str(tmp_path / "env1" / "gs" / "bucket" / "a" / "b.txt")
    monkeypatch.setenv("XQUTE_CLOUD_FSPATH", str(tmp_path / "env2"))
    assert os.fspath(path.mounted) == str(tmp_path / "env2" / "gs" / "bucket" / "a" / "b.txt")
    assert cloud_cache_path(path) == os.fspath(path)
    monkeypatch.setenv("XQUTE_CLOUD_FSPATH", "")  # ${VAR:-default}: empty means unset
    assert os.fspath(path) == str(tmp_path / "default" / "gs" / "bucket" / "a" / "b.txt")


async def test_get_fspath_and_fspath_agree_on_the_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("XQUTE_CLOUD_FSPATH", str(tmp_path / "cache"))
    path = SpecPath("gs://bucket/run/0/job.wrapped.local")
    local = keep_local_copy(path, "echo hi\n")
    assert local == os.fspath(path) == str(tmp_path / "cache/gs/bucket/run/0/job.wrapped.local")
    # the copy this process wrote is used as it is: no storage request
    assert await path.get_fspath() == local
    assert Path(local).read_text() == "echo hi\n"


def test_fspath_refuses_a_key_that_would_leave_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XQUTE_CLOUD_FSPATH", str(tmp_path))
    with pytest.raises(ValueError, match=r"'\.\.'"):
        os.fspath(SpecPath("gs://bucket/../../etc/passwd"))
