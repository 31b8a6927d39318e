"""Directive lines at the top of a batch script (``#SBATCH``, ``#$``, ...) from
a scheduler's options, by the rules the cluster backends share:

- ``True`` gives the bare flag (``notify=True`` -> ``-notify``);
- ``None`` and ``False`` leave the option out;
- a list or tuple gives the option once per item, each item by these rules
  (``l=["h_rt=60", "h_vmem=1G"]`` -> two ``-l`` lines);
- any other value gives the flag with that value.

How a key is spelled as a flag (``--mem``, ``-p``, ``-pe``) and how a value is
written after it (``--mem=4G``, ``-l h_rt=60``, quoted or not) are the
backend's own: it passes them in.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping


def render_directives(
    prefix: str,
    options: Mapping[Any, Any],
    flag: Callable[[Any], str],
    with_value: Callable[[str, Any], str],
) -> list[str]:
    """``prefix`` lines for ``options``, in their order.

    ``flag(key)`` spells an option's flag and raises ValueError for a key the
    batch system cannot take (it is called for every key, even one left out);
    ``with_value(flag, value)`` writes the flag with one value and raises
    ValueError for a value it cannot write (a line break would end the
    directive and start a line of script).
    """
    lines = []
    for key, value in options.items():
        spelled = flag(key)
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if item is None or item is False:
                continue
            lines.append(f"{prefix} {spelled if item is True else with_value(spelled, item)}")
    return lines


__all__ = ["render_directives"]
