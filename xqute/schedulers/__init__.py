"""Scheduler backends. ``get_scheduler("x")`` loads ``xqute.schedulers.x_scheduler.XScheduler``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Type

if TYPE_CHECKING:  # pragma: no cover
    from ..scheduler import Scheduler


def get_scheduler(scheduler: str | Type["Scheduler"]) -> Type["Scheduler"]:
    """The scheduler class for a name (``"local"``, ``"slurm"``, ...) or a class.

    Raises ValueError naming the scheduler when no such backend exists.
    """
    from ..scheduler import Scheduler

    if isinstance(scheduler, type):
        if not issubclass(scheduler, Scheduler):
            raise TypeError(f"{scheduler!r} is not a subclass of xqute.Scheduler")
        return scheduler
    if not isinstance(scheduler, str) or not scheduler.isidentifier():
        raise ValueError(f"Unknown scheduler {scheduler!r}")
    module_name = f"{__name__}.{scheduler.lower()}_scheduler"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ValueError(
            f"Unknown scheduler {scheduler!r}: there is no module {module_name}"
        ) from None
    class_name = f"{scheduler.capitalize()}Scheduler"
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ValueError(f"Unknown scheduler {scheduler!r}: {module_name} has no {class_name}") from None
