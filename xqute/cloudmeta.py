"""Meta files in object storage, for job wrappers: ``python -m xqute.cloudmeta``.

A job whose metadir is in a bucket (``gs://``, ``s3://``, ``az://``) but which runs
where that bucket is not mounted (the local or ssh scheduler with a cloud
workdir) cannot write its meta files with shell redirections. Its wrapper calls
this module instead (as ``python <this file>``, which imports only panpath), with
the same Python and credentials as the manager::

    python -m xqute.cloudmeta put URL TEXT
        write TEXT (plus a newline) to the object URL
    python -m xqute.cloudmeta finish METADIR LOCALDIR RC STATUS
        upload LOCALDIR/job.stdout and LOCALDIR/job.stderr, then write job.rc,
        then job.status, in that order (the manager takes a final status as the
        sign that everything else is there)
    python -m xqute.cloudmeta cat URL
        print the object's text (exit 1 if it does not exist)

Each write is retried a few times, since a job's end must not be lost to one
dropped connection. Exit status: 0 done, 1 failed (the reason on stderr), 2 bad
usage.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from typing import Awaitable, Callable

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(
    os.path.abspath(__file__)
):
    # run as a file: the package's own modules (path.py, utils.py, ...) must not
    # shadow top-level modules of the same names
    del sys.path[0]

from panpath import PanPath  # noqa: E402

USAGE = """usage: python -m xqute.cloudmeta put URL TEXT
       python -m xqute.cloudmeta finish METADIR LOCALDIR RC STATUS
       python -m xqute.cloudmeta cat URL"""

# Seconds to wait before the 2nd, 3rd, ... attempt of a write.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


async def _with_retries(what: str, action: Callable[[], Awaitable[object]]) -> None:
    for attempt, delay in enumerate((0.0, *RETRY_DELAYS)):
        if delay:
            await asyncio.sleep(delay)
        try:
            await action()
            return
        except Exception as exc:  # any client or connection error: try again
            if attempt == len(RETRY_DELAYS):
                raise RuntimeError(f"{what}: {type(exc).__name__}: {exc}") from exc


async def put(url: str, text: str) -> None:
    """Write ``text`` and a newline to ``url``."""
    path = PanPath(url)
    await _with_retries(f"writing {url}", lambda: path.a_write_text(f"{text}\n"))


async def finish(metadir: str, localdir: str, rc: str, status: str) -> None:
    """Upload the job's output files, then its rc, then its final status."""
    meta = PanPath(metadir)
    uploads = []
    for name in ("job.stdout", "job.stderr", "job.usage.raw"):
        local = os.path.join(localdir, name)
        try:
            with open(local, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            continue
        target = meta / name
        uploads.append(
            _with_retries(f"uploading {local} to {target}", lambda t=target, d=data: t.a_write_bytes(d))
        )
    await asyncio.gather(*uploads)
    await put(str(meta / "job.rc"), rc)
    await put(str(meta / "job.status"), status)


async def cat(url: str) -> str:
    return await PanPath(url).a_read_text()


async def _close_clients() -> None:
    """Close the async clients panpath opened, so no 'unclosed session' noise."""
    from panpath import registry

    for scheme in ("gs", "s3", "az"):
        try:
            cls = registry.get_path_class(scheme)
        except KeyError:
            continue
        client = getattr(cls, "_default_async_client", None)
        if client is not None and hasattr(client, "close"):
            try:
                await client.close()
            except Exception:
                pass


async def _main(argv: list[str]) -> int:
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    verb, args = argv[0], argv[1:]
    try:
        if verb == "put" and len(args) == 2:
            await put(*args)
        elif verb == "finish" and len(args) == 4:
            await finish(*args)
        elif verb == "cat" and len(args) == 1:
            try:
                sys.stdout.write(await cat(args[0]))
            except FileNotFoundError:
                print(f"xqute.cloudmeta: no such object: {args[0]}", file=sys.stderr)
                return 1
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except Exception as exc:
        print(f"xqute.cloudmeta {verb}: {exc}", file=sys.stderr)
        return 1
    finally:
        await _close_clients()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m xqute.cloudmeta``."""
    return asyncio.run(_main(sys.argv[1:] if argv is None else argv))


def wrapper_meta_functions(python: str | None = None) -> str:
    """The wrapper's meta-file functions for a metadir in object storage.

    Same names as the local ones (``_xq_put``, ``_xq_reserve``, ``_xq_put_final``,
    ``_xq_redirect``). The command's output goes to a local temporary folder and
    is uploaded at the end with the rc and status, in one call of this module;
    RUNNING is written in the background so the command does not wait for it.
    ``XQUTE_PYTHON`` in the job's environment picks another Python on the
    executing host (one that has panpath's cloud extras).
    """
    python = python or sys.executable or "python3"
    # This very file, run as a script: the same code as the manager's even when
    # xqute was imported from a source tree, and without importing the whole
    # package (it needs only panpath), which saves a fifth of each call.
    return f"""_xq_py="${{XQUTE_PYTHON:-{shlex.quote(python)}}}"
_xq_cloudmeta() {{ "$_xq_py" {shlex.quote(os.path.abspath(__file__))} "$@"; }}
_xq_local=$(mktemp -d "${{TMPDIR:-/tmp}}/xqute-job.XXXXXX") || exit 1
_xq_put() {{ _xq_cloudmeta put "$_xq_meta/$1" "$2" & _xq_put_pid=$!; }}
_xq_reserve() {{ :; }}
_xq_put_final() {{
    # RUNNING must not land after the final status
    [ -n "${{_xq_put_pid:-}}" ] && wait "$_xq_put_pid" 2>/dev/null
    _xq_cloudmeta finish "$_xq_meta" "$_xq_local" "$1" "$2"
    rm -rf "$_xq_local"
}}
_xq_redirect() {{ exec >"$_xq_local/job.stdout" 2>"$_xq_local/job.stderr"; }}
_xq_usage() {{ {{ echo "$_xq_t0 ${{EPOCHREALTIME:-}} ${{HOSTNAME:-}}"; times; _xq_peak; }} >"$_xq_local/job.usage.raw"; }} 2>/dev/null"""


if __name__ == "__main__":
    sys.exit(main())
