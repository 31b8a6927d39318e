"""The input of ``xqute run``: a file, pipe or terminal of shell command lines,
read as they come and fed to a running ``Xqute`` as jobs."""

from __future__ import annotations

import asyncio
import os
import stat
from typing import IO, TYPE_CHECKING, AsyncIterator

from .utils import logger

if TYPE_CHECKING:  # pragma: no cover
    from .xqute import Xqute


async def feed_command_lines(xqute: Xqute, stream: IO[bytes], stop: asyncio.Event) -> bool:
    """Feed each command line of ``stream`` to ``xqute`` as a ``bash -c`` job,
    until the end of the input or until ``stop`` is set (the run ended: later
    lines would never run). Blank and comment lines are skipped; a bad line is
    logged and skipped. Returns whether every line was good.
    """
    good = True
    async for number, raw in read_lines(stream, stop):
        try:
            command = command_of(raw, number)
        except ValueError as exc:
            good = False
            logger.error("Input %s", exc)
            continue
        if command is not None:
            # the line is bash's to read: "\$" keeps xqute from expanding
            # its $NAMEs first (and is an exact inverse for any text)
            await xqute.feed(["bash", "-c", command.replace("$", "\\$")])
    return good


def command_of(raw: bytes, number: int) -> str | None:
    """The command on input line ``number``; None for a blank or comment line.
    Raises ValueError for a line that cannot be a command."""
    try:
        line = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise ValueError(f"line {number} is not valid UTF-8: {exc}") from None
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if "\0" in line:
        raise ValueError(f"line {number} contains a NUL character")
    return line


async def read_lines(stream: IO[bytes], stop: asyncio.Event) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, line) from a file, pipe or terminal, as they come, until the
    end of the input or until ``stop`` is set (the run ended: Ctrl-C, halt)."""
    number = 0
    buffer = b""
    async for chunk in _read_chunks(stream.fileno(), stop):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            number += 1
            yield number, line
    if buffer and not stop.is_set():
        yield number + 1, buffer


async def _read_chunks(fd: int, stop: asyncio.Event) -> AsyncIterator[bytes]:
    if stat.S_ISREG(os.fstat(fd).st_mode):
        # a regular file never makes a read wait
        while not stop.is_set():
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            yield chunk
        return
    # a pipe or a terminal: wait for data without a thread, so a stopped run
    # does not hang on a producer that has not written (or closed) yet
    loop = asyncio.get_running_loop()
    was_blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    try:
        while not stop.is_set():
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                readable = loop.create_future()
                loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
                stopped = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({readable, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    loop.remove_reader(fd)
                    stopped.cancel()
                continue
            if not chunk:
                return
            yield chunk
    finally:
        os.set_blocking(fd, was_blocking)
