"""The ``xqute`` command: run a file of shell commands as jobs, show a run's
status, stop a run.

    xqute run [options] FILE|-     one job per line; exit 0 only if all succeed
    xqute status [WORKDIR]         a table of the jobs, from their meta files
    xqute kill [WORKDIR]           stop a run that is still going

``xqute run`` records how it was started (scheduler, options minus secrets, the
manager's pid) in ``<workdir>/xqute.run.json`` through the ``RunRecord`` plugin
(xqute.runrecord), which library users can add to their own runs so ``xqute
kill`` works on them. ``xqute status`` needs nothing but the jobs' meta files
(xqute.workdir_state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any, Sequence

from . import __version__, defaults
from .command_input import feed_command_lines
from .defaults import JobErrorStrategy
from .progress import ProgressPlugin
from .runkill import scheduler_for_run, stop_manager
from .runrecord import RUN_RECORD_NAME, RunRecord, manager_alive, read_run_record
from .utils import log_to_file, logger
from .workdir_state import (
    STATUS_NAMES,
    collect_status,
    format_status,
    jobs_going,
    metadirs,
    remove_stale_metadirs,
)

# RunRecord is imported from here in user code (docs/cli.md)
__all__ = ["CliError", "RunRecord", "build_parser", "main"]

# Exit statuses of `xqute run`
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """Bad input to the command line: printed as ``xqute: error: ...``, exit 2."""


def parse_opts(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that reads as JSON (3, true, ["a"]) is taken as such."""
    opts: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"--opt wants KEY=VALUE, got {pair!r}")
        try:
            opts[key] = json.loads(value)
        except ValueError:
            opts[key] = value
    return opts


# ------------------------------------------------------------------ commands
async def run_commands(args: argparse.Namespace) -> int:
    from .xqute import Xqute

    opts = parse_opts(args.opt or [])
    workdir = args.workdir
    if "://" not in workdir:
        # absolute, so the jobs' paths mean the same from any folder (xqute kill)
        workdir = os.path.abspath(workdir)
        running = read_run_record(workdir)
        if manager_alive(running):
            raise CliError(
                f"a run is still going in {workdir} (manager pid {running['manager']['pid']}); "
                "use another --workdir, or stop it with: xqute kill " + workdir
            )
    try:
        source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None

    record = RunRecord()
    progress = ProgressPlugin(display=args.progress, summary=not args.quiet, slowest=args.slowest)
    try:
        xqute = Xqute(
            args.scheduler,
            plugins=[record, progress],
            workdir=workdir,
            forks=args.forks,
            error_strategy=args.error_strategy,
            num_retries=args.num_retries,
            scheduler_opts=opts,
            jobname_prefix=args.jobname_prefix,
        )
    except (ValueError, TypeError, PermissionError, ImportError) as exc:
        raise CliError(str(exc)) from None

    await xqute.run_until_complete(keep_feeding=True)
    try:
        good_input = await feed_command_lines(xqute, source, record.ended)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        await xqute.stop_feeding()

    if "://" not in workdir:
        removed = remove_stale_metadirs(workdir, len(xqute.jobs))
        if removed:
            logger.info("Removed %s metadirs left by an earlier run in %s", removed, workdir)
    if record.signal is not None:
        return 128 + int(record.signal)
    summary = progress.summary
    if not good_input or summary is None:
        return EXIT_FAILED
    if summary.total == 0:
        print("xqute: no commands in the input", file=sys.stderr)
    return EXIT_OK if summary.succeeded == summary.total else EXIT_FAILED


def show_status(args: argparse.Namespace) -> int:
    only = None
    if args.only:
        only = {s.strip().upper() for item in args.only for s in item.split(",") if s.strip()}
        if only - STATUS_NAMES:
            raise CliError(f"unknown status {', '.join(sorted(only - STATUS_NAMES))}; "
                           f"use some of {', '.join(sorted(STATUS_NAMES))}")
    if args.fetch_usage:
        fetched = asyncio.run(fetch_usage(args))
        if fetched:
            print(f"Fetched the scheduler's usage figures of {fetched} trial"
                  f"{'s' if fetched != 1 else ''}", file=sys.stderr)
    try:
        state = collect_status(args.workdir, args.lines)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(state, indent=2))
    else:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print(format_status(state, colour=colour, only=only))
    return EXIT_OK


async def fetch_usage(args: argparse.Namespace) -> int:
    """Complete the usage records the run left ``pending`` (figures its
    scheduler's accounting had not given by the last status round), in one
    call through the recorded scheduler; how many trials got them."""
    workdir = args.workdir
    if not os.path.isdir(workdir):
        raise CliError(f"No such workdir: {args.workdir} (--fetch-usage reads a local workdir)")
    record = read_run_record(workdir) or {}
    name = args.scheduler or record.get("scheduler")
    if not name:
        raise CliError(f"{args.workdir} has no {RUN_RECORD_NAME}: say the scheduler with --scheduler")
    indexes = [index for index, _ in metadirs(workdir)]
    try:
        scheduler = scheduler_for_run(record, name, parse_opts(args.opt or []), args.workdir,
                                      forks=max(1, len(indexes)))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        return await scheduler.complete_usage(indexes)
    finally:
        await scheduler.close()


async def kill_run(args: argparse.Namespace) -> int:
    workdir = os.path.abspath(args.workdir)
    if not os.path.isdir(workdir):
        raise CliError(f"No such workdir: {args.workdir}")
    record = read_run_record(workdir) or {}
    try:
        stopped_manager = stop_manager(record, args.wait)
    except PermissionError as exc:
        raise CliError(str(exc)) from None

    # jobs the manager left going (it was killed outright, or ran elsewhere)
    going = jobs_going(workdir)
    killed: list[int] = []
    if going:
        name = args.scheduler or record.get("scheduler") or "local"
        opts = parse_opts(args.opt or [])
        try:
            scheduler = scheduler_for_run(record, name, opts, args.workdir, forks=len(going))
        except ValueError as exc:
            raise CliError(str(exc)) from None
        try:
            killed, gone = await scheduler.kill_left_running(going)
        finally:
            await scheduler.close()
        if gone:
            print(f"Not running according to {name}: jobs " + ", ".join(map(str, gone)),
                  file=sys.stderr)

    if killed:
        print(f"Killed {len(killed)} job{'s' if len(killed) != 1 else ''}: "
              + ", ".join(map(str, killed)), file=sys.stderr)
    if stopped_manager:
        print("The run was stopped.", file=sys.stderr)
    elif not killed:
        print(f"Nothing is running in {workdir}.", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------ parser
def _int_option(text: str, minimum: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_option(text, 1, "at least 1")


def _count(text: str) -> int:
    return _int_option(text, 0, "0 or more")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xqute",
        description="Run shell commands as jobs through a scheduler, and watch them.",
    )
    parser.add_argument("--version", action="version", version=f"xqute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{run,status,kill}")
    sub.required = True

    default_workdir = f"./{defaults.DEFAULT_WORKDIR_NAME}"
    run = sub.add_parser(
        "run",
        help="run each line of a file as a job",
        description="Run each line of FILE (or stdin with -) as a job: a bash command line. "
        "Blank lines and lines starting with # are skipped. Exit status: 0 when every job "
        "succeeded, 1 otherwise, 2 for bad input, 128+N when stopped by signal N.",
    )
    run.add_argument("file", metavar="FILE|-", help="the commands, one per line; - for stdin")
    run.add_argument("-s", "--scheduler", default="local",
                     help="local (default), sge, slurm, ssh, gbatch, container, or module:Class")
    run.add_argument("-f", "--forks", type=_positive_int, default=os.cpu_count() or 1,
                     help="jobs submitted or running at once (default: the number of CPUs, %(default)s)")
    run.add_argument("-w", "--workdir", default=default_workdir,
                     help="where each job gets its folder of meta files (default: %(default)s)")
    run.add_argument("-e", "--error-strategy", choices=JobErrorStrategy.values(),
                     default=defaults.DEFAULT_ERROR_STRATEGY,
                     help="what a failure does: go on (ignore, default), retry the job, or halt the run")
    run.add_argument("-r", "--num-retries", type=_count, default=defaults.DEFAULT_NUM_RETRIES,
                     help="more trials of a failed job with --error-strategy retry (default: %(default)s)")
    run.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE",
                     help="a scheduler option (repeatable); VALUE is read as JSON when it can be")
    run.add_argument("--jobname-prefix", help="prefix of the job names the scheduler sees")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="draw a progress bar (default: when stderr is a terminal)")
    run.add_argument("--slowest", type=_count, default=5,
                     help="how many of the slowest jobs the summary names (default: %(default)s)")
    _add_logging_args(run)

    status = sub.add_parser("status", help="show the jobs of a run",
                            description="Show the jobs of a run from their meta files.")
    status.add_argument("workdir", nargs="?", default=default_workdir, metavar="WORKDIR",
                        help="the run's workdir (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="print JSON for machines")
    status.add_argument("-n", "--lines", type=_count, default=5,
                        help="lines of stderr shown for each failed job (default: %(default)s)")
    status.add_argument("--only", action="append", metavar="STATUS",
                        help="show only jobs with this status (repeatable, or comma-separated)")
    status.add_argument("--fetch-usage", action="store_true",
                        help="first ask the run's scheduler (Slurm's sacct, qacct, Batch), in one "
                        "call, for the usage figures its accounting had not given by the run's "
                        "last status round")
    status.add_argument("-s", "--scheduler", help="with --fetch-usage: the scheduler, when the "
                        "workdir has no record")
    status.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE",
                        help="with --fetch-usage: a scheduler option, added to the recorded ones")

    kill = sub.add_parser(
        "kill", help="stop a run that is still going",
        description="Stop a run: its manager (when it runs on this host) and its jobs, "
        "through the scheduler recorded in WORKDIR/" + RUN_RECORD_NAME + ".",
    )
    kill.add_argument("workdir", nargs="?", default=default_workdir, metavar="WORKDIR",
                      help="the run's workdir (default: %(default)s)")
    kill.add_argument("-s", "--scheduler", help="the scheduler, when the workdir has no record")
    kill.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE",
                      help="a scheduler option, added to (or replacing) the recorded ones")
    kill.add_argument("--wait", type=float, default=30.0,
                      help="seconds to wait for the manager to stop before SIGKILL (default: %(default)s)")
    _add_logging_args(kill)
    return parser


def _add_logging_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more: -v for INFO, -vv for DEBUG (default: warnings and errors)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="log errors only, and print no summary")
    parser.add_argument("--log-file", metavar="FILE", help="also write the full (DEBUG) log to FILE")


def _setup_logging(args: argparse.Namespace) -> None:
    if args.quiet:
        level = logging.ERROR
    elif args.verbose >= 2:
        level = logging.DEBUG
    elif args.verbose == 1:
        level = logging.INFO
    elif "XQUTE_LOG_LEVEL" in os.environ:
        level = logger.level
    else:
        # the summary says what INFO would: keep the terminal for what went wrong
        level = logging.WARNING
    logger.setLevel(level)
    if args.log_file:
        try:
            log_to_file(args.log_file)
        except OSError as exc:
            raise CliError(f"cannot write the log file {args.log_file}: {exc.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xqute`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            return show_status(args)
        _setup_logging(args)
        if args.command == "run":
            return asyncio.run(run_commands(args))
        return asyncio.run(kill_run(args))
    except CliError as exc:
        print(f"xqute: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `xqute status | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return 130
