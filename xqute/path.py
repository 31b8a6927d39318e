"""Paths that know where they are seen from.

A job's files are written by the manager (which sees a ``SpecPath``) and by the
job itself, running maybe in a container, a cloud VM or on another host (which
sees the same place as ``SpecPath.mounted``, a ``MountedPath``). Both are
panpath paths, so local and cloud (``gs://``, ``s3://``, ``az://``) places share
one interface; the pair survives ``/``, ``joinpath``, ``parent``, ``with_name`` and
``with_suffix``.

The module also holds the few meta-file I/O helpers the manager uses: local files
are read and written directly (they are tiny, and a thread hop per file costs
more than the read), cloud files through panpath's async methods.
"""

from __future__ import annotations

import os
import sys
from pathlib import PurePath
from typing import Any

from panpath import AzurePath, CloudPath, GSPath, LocalPath, PanPath, S3Path


__all__ = [
    "SpecPath",
    "MountedPath",
    "SpecLocalPath",
    "SpecCloudPath",
    "SpecGSPath",
    "SpecS3Path",
    "SpecAzurePath",
    "MountedLocalPath",
    "MountedCloudPath",
    "MountedGSPath",
    "MountedS3Path",
    "MountedAzurePath",
    "read_meta",
    "write_meta",
]


# 3.12 moved setting a path's segments from __new__ to __init__
_PATH_INIT_TAKES_SEGMENTS = sys.version_info >= (3, 12)
# Python up to 3.11 makes a path from parts already split, with no parsing
# (what pathlib's own ``/`` does); a status round builds thousands of meta file
# paths, and parsing each string again costs ten times as much. 3.12 changed
# these internals, so there the string is parsed.
_FROM_SPLIT_PARTS = not _PATH_INIT_TAKES_SEGMENTS and isinstance(
    PurePath.__dict__.get("_from_parsed_parts"), classmethod
)


def _local_from_parts(cls: type, like: Any, extra: str | None = None) -> Any:
    """A ``cls`` (a local path class) at ``like``'s place, or at its child
    ``extra`` (one plain name), with no partner."""
    text = str(like)
    if extra:
        text = text + extra if text.endswith("/") else f"{text}/{extra}"
    if _FROM_SPLIT_PARTS:
        parts = [*like._parts, extra] if extra else list(like._parts)
        obj = cls._from_parsed_parts(like._drv, like._root, parts)
        obj._str = text  # what str() would make of the parts
    else:
        obj = cls._new_plain(text)
    obj._partner = None
    return obj


def _kind(path: str) -> str:
    """'gs', 's3', 'az' or 'local' for a path string."""
    head = path.split("://", 1)[0].lower() if "://" in path else ""
    if head == "gs":
        return "gs"
    if head == "s3":
        return "s3"
    if head in ("az", "azure"):
        return "az"
    return "local"


class _PairedPath:
    """A panpath path carrying its counterpart (mounted for a spec path, spec for a
    mounted one) as a string, or None when both are the same place."""

    # filled in per kind: the class to build for a given kind
    _kinds: dict[str, type] = {}
    _partner: str | None
    _mounted: Any

    @classmethod
    def _build(cls, path: Any, partner: Any = None) -> Any:
        path = str(path)
        kind_cls = cls._kinds[_kind(path)]
        obj = kind_cls._new_plain(path)
        obj._partner = None if partner is None or str(partner) == path else str(partner)
        return obj

    @classmethod
    def _new_plain(cls, path: str) -> Any:
        # the plain panpath class this kind extends makes the object
        obj = super(_PairedPath, cls).__new__(cls, path)  # type: ignore[misc]
        if _PATH_INIT_TAKES_SEGMENTS:
            # 3.12's pathlib keeps the segments in __init__, which our own
            # __init__ (taking ``mounted=``/``spec=``) does not pass on
            super(_PairedPath, obj).__init__(path)  # type: ignore[misc]
        return obj

    def _partner_path(self) -> PanPath:
        other = self._partner if self._partner is not None else str(self)
        return PanPath(other)

    # -- derivations keep the pair -------------------------------------------
    def _derived(self, plain: Any, partner_plain: Any) -> Any:
        partner = None if self._partner is None else partner_plain
        return type(self)._pair_root()._build(plain, partner)

    def __truediv__(self, key: Any) -> Any:
        if self._partner is None and isinstance(self, LocalPath) and isinstance(key, str) \
                and key and "/" not in key and key not in (".", ".."):
            # a local path with no other side, and one plain name: the join
            # needs no parsing (status rounds build thousands of these)
            return _local_from_parts(type(self), self, key)
        plain = PanPath(str(self)) / str(key)
        return self._derived(plain, self._partner_path() / str(key))

    def joinpath(self, *segments: Any) -> Any:
        plain = PanPath(str(self)).joinpath(*map(str, segments))
        return self._derived(plain, self._partner_path().joinpath(*map(str, segments)))

    @property
    def parent(self) -> Any:
        return self._derived(PanPath(str(self)).parent, self._partner_path().parent)

    def with_name(self, name: str) -> Any:
        return self._derived(
            PanPath(str(self)).with_name(name), self._partner_path().with_name(name)
        )

    def with_suffix(self, suffix: str) -> Any:
        return self._derived(
            PanPath(str(self)).with_suffix(suffix), self._partner_path().with_suffix(suffix)
        )

    # -- identity ---------------------------------------------------------------
    def __eq__(self, other: Any) -> bool:
        if isinstance(other, _PairedPath):
            if type(self)._pair_root() is not type(other)._pair_root():
                # a spec path and a mounted path (as in 2.x): the same string is
                # the same path, whatever either is paired with
                return str(self) == str(other)
            # two spec (or two mounted) paths: the pair must match too
            return str(self) == str(other) and self._partner == other._partner
        return str(self) == str(other) if isinstance(other, (str, os.PathLike)) else False

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        # the string alone: equal paths (a spec path and a mounted path, a path
        # and its string) must hash alike; pairs differing only in the partner
        # collide, which sets and dicts handle
        return hash(str(self))

    def __reduce__(self) -> Any:
        return (type(self)._pair_root()._build, (str(self), self._partner))

    def __repr__(self) -> str:
        if self._partner is None:
            return f"{type(self).__name__}({str(self)!r})"
        side = "mounted" if isinstance(self, SpecPath) else "spec"
        return f"{type(self).__name__}({str(self)!r}, {side}={self._partner!r})"


class SpecPath(_PairedPath, PanPath):
    """A path as the manager sees it; ``mounted`` is how the job sees it.

    ``SpecPath("/data/wd", mounted="/mnt/wd")``; with no ``mounted`` both sides are
    the same place.
    """

    def __new__(cls, path: Any, *args: Any, mounted: Any = None, **kwargs: Any) -> Any:
        if args:
            path = PanPath(str(path), *map(str, args))
        if mounted is None and isinstance(path, SpecPath):
            mounted = path._partner
        return SpecPath._build(path, mounted)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # set up in __new__
        pass

    @classmethod
    def _pair_root(cls) -> type:
        return SpecPath

    @property
    def mounted(self) -> "MountedPath":
        """The same place as the job's executor sees it."""
        # made once: paths do not change, and a job asks several times
        found = self.__dict__.get("_mounted")
        if found is None:
            if self._partner is None and isinstance(self, LocalPath):
                found = _local_from_parts(MountedLocalPath, self)
            elif self._partner is None:
                found = MountedPath._build(str(self), None)
            else:
                found = MountedPath._build(self._partner, str(self))
            self._mounted = found
        return found

    async def get_fspath(self) -> str:
        """A local file-system path: the path itself, or for a cloud path a
        cached local copy under ``DEFAULT_CLOUD_FSPATH``."""
        return str(self)


class MountedPath(_PairedPath, PanPath):
    """A path as the job's executor sees it; ``spec`` is the manager's side.

    ``MountedPath("/mnt/wd", "/data/wd")`` or ``MountedPath("/mnt/wd",
    spec="/data/wd")``.
    """

    def __new__(cls, path: Any, spec: Any = None, *args: Any, **kwargs: Any) -> Any:
        # ``MountedPath(path, spec)``: the second positional argument is the
        # manager's side, as in 2.x (not a path segment to join)
        if args:
            raise TypeError(
                f"MountedPath takes a path and its spec path, not {2 + len(args)} "
                "positional arguments (join segments with / first)"
            )
        if spec is None and isinstance(path, MountedPath):
            spec = path._partner
        return MountedPath._build(path, spec)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    @classmethod
    def _pair_root(cls) -> type:
        return MountedPath

    @property
    def spec(self) -> SpecPath:
        """The same place as the manager sees it."""
        if self._partner is None:
            if isinstance(self, LocalPath):
                return _local_from_parts(SpecLocalPath, self)
            return SpecPath._build(str(self), None)
        return SpecPath._build(self._partner, str(self))

    def is_mounted(self) -> bool:
        """Whether the job sees this place under another path than the manager."""
        return self._partner is not None

    async def get_fspath(self) -> str:
        return str(self)


class SpecLocalPath(SpecPath, LocalPath):
    """A local spec path."""


class MountedLocalPath(MountedPath, LocalPath):
    """A local mounted path."""


# Local copies this process made of objects it wrote itself: url -> mtime_ns of
# the copy. ``get_fspath`` gives such a copy without downloading the object again.
_OWN_COPIES: dict[str, int] = {}


def cloud_cache_root() -> str:
    """The folder cloud paths are copied under: ``$XQUTE_CLOUD_FSPATH`` when set
    and not empty, else ``xqute.defaults.DEFAULT_CLOUD_FSPATH``; both read at
    call time (clients may change either)."""
    from . import defaults

    return os.environ.get("XQUTE_CLOUD_FSPATH") or defaults.DEFAULT_CLOUD_FSPATH


def cloud_cache_path(path: Any) -> str:
    """Where the local copy of a cloud path goes:
    ``<cloud_cache_root()>/<scheme>/<bucket>/<key>`` (``azure://`` as ``az``).

    Raises ValueError for a key with a ``..`` segment, whose copy would land
    outside the cache folder.
    """
    scheme, _, rest = str(path).partition("://")
    scheme = "az" if scheme == "azure" else scheme
    segments = [seg for seg in rest.split("/") if seg]
    if ".." in segments:
        raise ValueError(
            f"No local copy for {str(path)!r}: '..' in a key would leave the cache folder"
        )
    return os.path.join(cloud_cache_root(), scheme, *segments)


def keep_local_copy(path: Any, text: str) -> str:
    """Record ``text``, just written to the cloud ``path``, as its local copy,
    so running the file (a job's wrapper) needs no download. Returns the copy."""
    local = cloud_cache_path(path)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = f"{local}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, local)
    _OWN_COPIES[str(path)] = os.stat(local).st_mtime_ns
    return local


class _CloudFsPath:
    def __fspath__(self) -> str:
        """``os.fspath()`` of a cloud path is where its local copy goes (see
        ``cloud_cache_path``), as in 2.x; it does not download anything:
        ``await get_fspath()`` does. ``str()`` stays the URL."""
        return cloud_cache_path(self)

    async def get_fspath(self) -> str:
        """A local copy at ``os.fspath(self)`` (under ``$XQUTE_CLOUD_FSPATH`` or
        ``DEFAULT_CLOUD_FSPATH``): downloaded (a prefix as a folder tree), unless
        this process wrote the object and kept its copy."""
        local = cloud_cache_path(self)
        known = _OWN_COPIES.get(str(self))
        if known is not None:
            try:
                if os.stat(local).st_mtime_ns == known:
                    return local
            except FileNotFoundError:
                pass
            del _OWN_COPIES[str(self)]
        plain = PanPath(str(self))
        if await plain.a_is_file():
            os.makedirs(os.path.dirname(local), exist_ok=True)
            await plain.a_copy(local)
        else:
            await plain.a_copytree(local)
        return local


class SpecCloudPath(_CloudFsPath, SpecPath, CloudPath):
    """A spec path in object storage."""


class SpecGSPath(SpecCloudPath, GSPath):
    """A spec path in Google Cloud Storage."""


class SpecS3Path(SpecCloudPath, S3Path):
    """A spec path in Amazon S3."""


class SpecAzurePath(SpecCloudPath, AzurePath):
    """A spec path in Azure Blob Storage."""


class MountedCloudPath(_CloudFsPath, MountedPath, CloudPath):
    """A mounted path in object storage."""


class MountedGSPath(MountedCloudPath, GSPath):
    """A mounted path in Google Cloud Storage."""


class MountedS3Path(MountedCloudPath, S3Path):
    """A mounted path in Amazon S3."""


class MountedAzurePath(MountedCloudPath, AzurePath):
    """A mounted path in Azure Blob Storage."""


SpecPath._kinds = {"local": SpecLocalPath, "gs": SpecGSPath, "s3": SpecS3Path, "az": SpecAzurePath}
MountedPath._kinds = {
    "local": MountedLocalPath,
    "gs": MountedGSPath,
    "s3": MountedS3Path,
    "az": MountedAzurePath,
}


def is_local(path: Any) -> bool:
    return isinstance(path, LocalPath) or (
        isinstance(path, (str, os.PathLike)) and "://" not in str(path)
    )


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def _read_local(path: str) -> str | None:
    # os-level calls: a status round reads thousands of these small files,
    # and a buffered text file costs several times more per read
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except IsADirectoryError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _write_local(path: str, data: bytes) -> None:
    fd = os.open(path, _WRITE_FLAGS, 0o666)  # as open() does: the umask applies
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def overwrite_in_place(path: Any, text: str) -> bool:
    """Overwrite a local meta file's text with ``text`` of the same length,
    in place (no new disk space): True if it was done. For the end of a job
    on a full disk, where the temporary file of ``write_meta`` cannot be made."""
    if not isinstance(path, LocalPath):
        return False
    data = text.encode("utf-8")
    try:
        fd = os.open(str(path), os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != len(data):
            return False
        return os.write(fd, data) == len(data)
    except OSError:
        return False
    finally:
        os.close(fd)


async def read_meta(path: PanPath) -> str | None:
    """Text of a meta file, or None when it does not exist (or cannot be read)."""
    if isinstance(path, LocalPath):
        return _read_local(str(path))
    try:
        return await path.a_read_text()
    except FileNotFoundError:
        return None


async def write_meta(path: PanPath, text: str, atomic: bool = True) -> None:
    """Write a meta file so a reader sees the old or the new text, never half.

    Local: write a temporary file beside it, then rename over it; with
    ``atomic=False`` (a file nothing reads while it is written, such as a
    wrapper script before its job is submitted), write it in place. Object
    stores replace an object in one request already.
    """
    if isinstance(path, LocalPath):
        target = str(path)
        if not atomic:
            _write_local(target, text.encode("utf-8"))
            return
        tmp = f"{target}.{os.getpid()}.tmp"
        try:
            _write_local(tmp, text.encode("utf-8"))
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return
    await path.a_write_text(text)


# Objects one listing request returns (GCS, S3 and Azure all page by 1000).
LISTING_PAGE = 1000


async def job_folders_with(
    workdir: Any, name: str, indexes: Any, estimated_objects: int
) -> set[int] | None:
    """Which of the job folders ``indexes`` under a cloud ``workdir`` hold ``name``.

    One recursive listing of the workdir prefix (panpath's ``a_glob``) answers
    for all jobs at once, where reading each job's file costs a request per job.
    Returns None, meaning "read each job's file", when the workdir is local,
    when the listing would cost more requests than it saves (given
    ``estimated_objects`` under the workdir), or when it fails. GCS listings
    through panpath stop at one page, so there a larger workdir is not listed.
    A job missing from a listing is only "not seen yet": callers must not take
    it as proof that the file is absent.
    """
    indexes = set(indexes)
    if is_local(workdir) or len(indexes) < 2:
        return None
    pages = -(-max(estimated_objects, 1) // LISTING_PAGE)
    if pages >= len(indexes) or (_kind(str(workdir)) == "gs" and pages > 1):
        return None
    base = str(workdir).split("://", 1)[1].rstrip("/") + "/"
    found: set[int] = set()
    try:
        async for item in PanPath(str(workdir)).a_glob(f"**/{name}"):
            key = str(item).split("://", 1)[1]
            if not key.startswith(base):
                continue  # another folder that shares the prefix ("wd" vs "wd2")
            folder, sep, rest = key[len(base) :].partition("/")
            if sep and rest == name and folder.isdigit() and int(folder) in indexes:
                found.add(int(folder))
    except Exception:  # a failed listing must not stop the round: read files instead
        return None
    return found
