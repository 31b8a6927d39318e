"""One resource request for every backend: what a job asks for, checked once.

``resources`` in ``scheduler_opts`` (``{"cpus": 4, "memory": "8G", "time": "2h",
"gpus": 1}``) is parsed here into a ``Resources``; each backend maps it onto its
own directives. A value that makes no sense (negative, unparsable, an unknown
key) is a ValueError when the scheduler is made, before any job starts.

``RetryPolicy`` says what a failure cause changes on the next trial (double the
memory after ``oom``, time x1.5 after ``timeout``), and ``resource_limits``
caps that escalation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

RESOURCE_KEYS = ("cpus", "memory", "time", "gpus")

# How a job ended, as the usage record and the retry policy name it.
EXIT_CAUSES = (
    "ok", "failed", "oom", "timeout", "killed", "node_fail", "preempted", "cancelled", "unknown",
)

_MEMORY_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE | re.ASCII)
_MEMORY_UNITS_MB = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}
_DURATION_RE = re.compile(r"(?:([0-9.]+)d)?(?:([0-9.]+)h)?(?:([0-9.]+)m)?(?:([0-9.]+)s)?", re.ASCII)
_CLOCK_RE = re.compile(r"(?:([0-9]+)-)?([0-9]+)(?::([0-9]+))?(?::([0-9]+))?", re.ASCII)


def parse_memory(value: Any) -> int:
    """Megabytes from ``"4G"``, ``"512M"``, ``"1.5GB"``, ``"2048"`` or a number
    (a bare number is megabytes, as Slurm's ``--mem`` reads it)."""
    if isinstance(value, bool):
        raise ValueError(f"memory must be a size such as '4G', got {value!r}")
    if isinstance(value, (int, float)):
        megabytes = float(value)
    else:
        match = _MEMORY_RE.fullmatch(str(value).strip())
        if match is None:
            raise ValueError(f"memory {value!r} is not a size such as '4G', '512M' or 2048 (MB)")
        megabytes = float(match.group(1)) * _MEMORY_UNITS_MB[match.group(2).upper()]
    if not math.isfinite(megabytes) or megabytes < 1:
        raise ValueError(f"memory must be at least 1M, got {value!r}")
    return int(math.ceil(megabytes))


def parse_time(value: Any) -> int:
    """Seconds from ``"2h"``, ``"1h30m"``, ``"90m"``, ``"1:30:00"``,
    ``"1-12:00:00"`` (days-hours:minutes:seconds), ``"45"`` or a number of
    seconds."""
    if isinstance(value, bool):
        raise ValueError(f"time must be a duration such as '2h', got {value!r}")
    seconds: float | None = None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
            seconds = float(text)
        elif ":" in text:
            match = _CLOCK_RE.fullmatch(text)
            if match:
                days, *parts = match.groups()
                numbers = [int(part) for part in parts if part is not None]
                # H:MM:SS, or MM:SS
                while len(numbers) < 3:
                    numbers.insert(0, 0)
                hours, minutes, secs = numbers
                seconds = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs
        elif text:
            match = _DURATION_RE.fullmatch(text)
            if match and any(match.groups()):
                try:
                    days, hours, minutes, secs = (float(part or 0) for part in match.groups())
                except ValueError:
                    match = None
                else:
                    seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    if seconds is None:
        raise ValueError(
            f"time {value!r} is not a duration such as '2h', '90m', '1:30:00' or 3600 (seconds)"
        )
    if not math.isfinite(seconds) or seconds < 1:
        raise ValueError(f"time must be at least 1 second, got {value!r}")
    return int(math.ceil(seconds))


def _count(key: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{key} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{key} must be a whole number, got {value!r}") from None
    if number < least:
        raise ValueError(f"{key} must be at least {least}, got {value!r}")
    return number


@dataclass(frozen=True)
class Resources:
    """What a job asks for; None: not asked (the scheduler's default).

    ``memory_mb`` is megabytes, ``time_s`` seconds.
    """

    cpus: int | None = None
    memory_mb: int | None = None
    time_s: int | None = None
    gpus: int | None = None
    # nodes a retry keeps away from after a node failure (retry_policy's
    # ``exclude_node``); never set by users
    exclude_nodes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None, what: str = "resources") -> "Resources":
        """``spec`` (``cpus``, ``memory``, ``time``, ``gpus``) checked and
        normalised; ValueError naming the bad key and value otherwise."""
        if spec is None:
            return cls()
        if isinstance(spec, Resources):
            return spec
        if not isinstance(spec, Mapping):
            raise ValueError(f"{what} must be a mapping of {', '.join(RESOURCE_KEYS)}, got {spec!r}")
        unknown = sorted(str(key) for key in spec if key not in RESOURCE_KEYS)
        if unknown:
            raise ValueError(
                f"unknown key(s) in {what}: {', '.join(unknown)}; use {', '.join(RESOURCE_KEYS)}"
            )
        try:
            return cls(
                cpus=None if spec.get("cpus") is None else _count("cpus", spec["cpus"], 1),
                memory_mb=None if spec.get("memory") is None else parse_memory(spec["memory"]),
                time_s=None if spec.get("time") is None else parse_time(spec["time"]),
                gpus=None if spec.get("gpus") is None else _count("gpus", spec["gpus"], 0),
            )
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None

    def __bool__(self) -> bool:
        # spelled out: asked several times per job, and fields() is slow
        return (
            self.cpus is not None
            or self.memory_mb is not None
            or self.time_s is not None
            or self.gpus is not None
            or bool(self.exclude_nodes)
        )

    def excluding(self, node: str) -> "Resources":
        """These resources, keeping the next trial off ``node`` too."""
        if not node or node in self.exclude_nodes:
            return self
        return replace(self, exclude_nodes=(*self.exclude_nodes, node))

    def scaled(self, memory: float = 1.0, time: float = 1.0) -> "Resources":
        """These resources with memory and time multiplied (rounded up)."""
        return replace(
            self,
            memory_mb=None if self.memory_mb is None else int(math.ceil(self.memory_mb * memory)),
            time_s=None if self.time_s is None else int(math.ceil(self.time_s * time)),
        )

    def over(self, limits: "Resources") -> str:
        """Why these resources pass ``limits`` ("" if they do not)."""
        for field in fields(self):
            if field.name == "exclude_nodes":
                continue
            mine, cap = getattr(self, field.name), getattr(limits, field.name)
            if mine is not None and cap is not None and mine > cap:
                return f"{field.name} {mine} is over the limit {cap}"
        return ""

    def as_dict(self) -> dict[str, Any]:
        """The request as the usage record and ``xqute status`` show it."""
        shown: dict[str, Any] = {}
        if self.cpus is not None:
            shown["cpus"] = self.cpus
        if self.memory_mb is not None:
            shown["memory"] = f"{self.memory_mb}M"
        if self.time_s is not None:
            shown["time"] = self.time_s
        if self.gpus is not None:
            shown["gpus"] = self.gpus
        if self.exclude_nodes:
            shown["exclude_nodes"] = list(self.exclude_nodes)
        return shown

    @property
    def clock(self) -> str | None:
        """``time_s`` as ``[D-]HH:MM:SS`` (Slurm's ``--time``, Grid Engine's
        ``h_rt`` read it)."""
        if self.time_s is None:
            return None
        days, rest = divmod(self.time_s, 86400)
        hours, rest = divmod(rest, 3600)
        minutes, seconds = divmod(rest, 60)
        clock = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
        return f"{days}-{clock}" if days else clock


# What each cause changes on the next trial by default.
DEFAULT_RETRY_POLICY: dict[str, dict[str, Any]] = {
    "oom": {"memory": 2.0},
    "timeout": {"time": 1.5},
    "node_fail": {"exclude_node": True},
}
_POLICY_KEYS = {"memory", "time", "exclude_node"}


def parse_retry_policy(policy: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``retry_policy``: {cause: {"memory": factor, "time": factor,
    "exclude_node": bool}}; causes not named keep the default."""
    merged = {cause: dict(change) for cause, change in DEFAULT_RETRY_POLICY.items()}
    if policy is None:
        return merged
    if not isinstance(policy, Mapping):
        raise ValueError(f"retry_policy must be a mapping of cause to changes, got {policy!r}")
    for cause, change in policy.items():
        if cause not in EXIT_CAUSES:
            raise ValueError(f"retry_policy: unknown cause {cause!r}; use one of {', '.join(EXIT_CAUSES)}")
        if change is None:
            merged.pop(cause, None)
            continue
        if not isinstance(change, Mapping) or not set(change) <= _POLICY_KEYS:
            raise ValueError(
                f"retry_policy[{cause!r}] must be a mapping of {', '.join(sorted(_POLICY_KEYS))}, "
                f"got {change!r}"
            )
        for key in ("memory", "time"):
            factor = change.get(key)
            if factor is not None and (
                isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1
            ):
                raise ValueError(f"retry_policy[{cause!r}][{key!r}] must be a factor >= 1, got {factor!r}")
        merged[cause] = dict(change)
    return merged


# What the wrapper writes just before its return code: "<start> <end> <host>"
# (bash's $EPOCHREALTIME), then the output of bash's ``times`` (the shell's
# user/sys CPU, then its children's), then, where the job has a memory cgroup
# of its own (``Scheduler.peak_memory_file``), "peak <bytes>".
USAGE_RAW_FILE = "job.usage.raw"
_TIMES_RE = re.compile(r"([0-9]+)m([0-9.]+)s\s+([0-9]+)m([0-9.]+)s", re.ASCII)


def usage_from_wrapper(text: str | None) -> dict[str, Any]:
    """The usage figures in the wrapper's raw record (``USAGE_RAW_FILE``):
    ``wall_s``, ``cpu_s`` (the command's user + sys), ``host``, and their
    ``sources``. Missing or garbled parts are None."""
    record: dict[str, Any] = {
        "wall_s": None, "cpu_s": None, "peak_memory_mb": None, "host": None, "sources": {},
    }
    lines = (text or "").splitlines()
    if lines:
        words = lines[0].split()
        try:
            start, end = float(words[0]), float(words[1])
        except (IndexError, ValueError):
            pass
        else:
            if end >= start:
                record["wall_s"] = round(end - start, 3)
                record["sources"]["wall_s"] = "wrapper"
        if len(words) > 2:
            record["host"] = words[2]
            record["sources"]["host"] = "wrapper"
    if len(lines) > 2:
        match = _TIMES_RE.search(lines[2])
        if match:
            user = int(match.group(1)) * 60 + float(match.group(2))
            system = int(match.group(3)) * 60 + float(match.group(4))
            record["cpu_s"] = round(user + system, 3)
            record["sources"]["cpu_s"] = "wrapper"
    for line in lines[3:]:
        words = line.split()
        if len(words) == 2 and words[0] == "peak" and words[1].isdigit() and int(words[1]) > 0:
            record["peak_memory_mb"] = round(int(words[1]) / 1048576, 1)
            record["sources"]["peak_memory_mb"] = "cgroup"
    return record
