"""The names profiling accepts, and their checks -- importable without torch (the CLI builds its choices here).

* :data:`CONVENTIONS` -- counting conventions: ``complete`` (every aten op) and ``official`` (the official
  counter's rules and quirks; :mod:`cotviz.profile.rules`);
* :data:`DTYPES` -- activation / weight dtypes for counting memory and for measuring.

The output formats are the keys of :data:`cotviz.profile.render.RENDERERS`.
"""

from __future__ import annotations

from typing import Literal

from cotviz.errors import InvalidArgumentError

__all__ = ["CONVENTIONS", "DTYPES", "MIN_SIZE", "Convention", "check_choice"]

Convention = Literal["complete", "official"]
CONVENTIONS: tuple[str, ...] = ("complete", "official")
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: Smallest input side: the total stride of every registered backbone (its last feature map is 1x1 there).
MIN_SIZE = 32


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` normalised (stripped, lower case) if it is one of ``choices``, else one clear error."""
    v = str(value).strip().lower()
    if v not in choices:
        raise InvalidArgumentError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return v
