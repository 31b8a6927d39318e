"""Scheduler backends. ``get_scheduler("x")`` loads ``xqute.schedulers.x_scheduler.XScheduler``;
``get_scheduler("mypkg.mod:MyScheduler")`` loads a scheduler defined elsewhere."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Type

if TYPE_CHECKING:  # pragma: no cover
    from ..scheduler import Scheduler


def get_scheduler(scheduler: str | Type["Scheduler"]) -> Type["Scheduler"]:
    """The scheduler class for a name (``"local"``, ``"slurm"``, ...), a
    ``"module:Class"`` reference (``"mypkg.mod:MyScheduler"``) or a class.

    Raises ValueError naming the scheduler when no such backend exists or the
    reference does not name a Scheduler subclass.
    """
    from ..scheduler import Scheduler

    if isinstance(scheduler, type):
        if not issubclass(scheduler, Scheduler):
            raise TypeError(f"{scheduler!r} is not a subclass of xqute.Scheduler")
        return scheduler
    if isinstance(scheduler, str) and ":" in scheduler:
        return _load_reference(scheduler, Scheduler)
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


def _load_reference(reference: str, base: type) -> Type["Scheduler"]:
    """The class a ``module:Class`` reference names (``Class`` may be dotted)."""
    module_name, _, qualname = reference.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".") + qualname.split(".")):
        raise ValueError(
            f"Unknown scheduler {reference!r}: a scheduler is a name (local, slurm, ...) "
            "or module:Class, like mypkg.schedulers:MyScheduler"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # the module itself (or a package above it) is missing; a module that is
        # there but fails to import raises its own error
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise
        raise ValueError(f"Unknown scheduler {reference!r}: there is no module {module_name}") from None
    found: object = module
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ValueError(f"Unknown scheduler {reference!r}: {module_name} has no {qualname}") from None
    if not isinstance(found, type) or not issubclass(found, base):
        raise ValueError(f"Scheduler {reference!r} is {found!r}, not a subclass of xqute.Scheduler")
    return found
