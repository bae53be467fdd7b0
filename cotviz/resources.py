"""What a run may use: the device, CPU threads and memory -- one rule each, shared by every command.

* :func:`parse_device` -- ``cpu`` / ``cuda`` / ``cuda:N`` -> a usable ``torch.device``, or one clear error.
* :func:`usable_cpus`, :func:`check_threads`, :func:`torch_threads` -- thread counts are bounded by the CPUs
  this process may run on (``os.sched_getaffinity``): more threads than CPUs only thrash (torch's own
  ``set_num_threads(100000)`` segfaults), so larger values are refused with one line.
* :func:`available_memory`, :func:`check_memory` -- refuse, before allocating, work whose estimated memory
  exceeds what the machine can give (``MemAvailable`` and the cgroup limit), unless the caller overrides.

torch is imported only inside the functions that need it, so the CLI can validate options cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cotviz.errors import InvalidArgumentError, ResourceLimitError

if TYPE_CHECKING:
    import torch

__all__ = [
    "available_memory",
    "check_memory",
    "check_threads",
    "format_bytes",
    "parse_device",
    "torch_threads",
    "usable_cpus",
]


def parse_device(device: str) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N`` -> a usable device, or one clear error (:class:`InvalidArgumentError`)."""
    import torch

    name = str(device).strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else "no GPU visible"
            raise InvalidArgumentError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                                       f"{built}); use --device cpu")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise InvalidArgumentError(f"unknown device {device!r}; choose cpu, cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidArgumentError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return dev
    raise InvalidArgumentError(f"unknown device {device!r}; choose cpu or cuda")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None, option: str = "--threads") -> int | None:
    """``threads`` if it is between 1 and :func:`usable_cpus` (None passes through), else one clear error."""
    if threads is None:
        return None
    limit = usable_cpus()
    if threads < 1 or threads > limit:
        raise InvalidArgumentError(f"{option} must be between 1 and {limit} (the CPUs this process may use), "
                                   f"got {threads}")
    return threads


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads (checked by :func:`check_threads`), then restore the previous
    count. ``None`` leaves the setting alone."""
    import torch

    check_threads(threads)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # "MemAvailable:  123456 kB"
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Bytes left under the cgroup v2 memory limit (None without one)."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        current = int((base / "memory.current").read_text().strip())
        return max(int(limit) - current, 0)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes a new allocation can get without swapping or hitting the cgroup limit (None if unknown)."""
    values = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(values) if values else None


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(needed: int, what: str, *, override: str, available: int | None = None) -> None:
    """Refuse (:class:`ResourceLimitError`) when ``needed`` bytes exceed the memory available now.

    Args:
        needed: the estimate, in bytes.
        what: the work, for the message ("cotnet50 at 100000 px, batch 1").
        override: how the caller turns the check off (named in the message).
        available: bytes available (default: :func:`available_memory`; unknown -> no check).
    """
    avail = available_memory() if available is None else available
    if avail is not None and needed > avail:
        raise ResourceLimitError(f"{what} needs about {format_bytes(needed)} of memory, but only "
                                 f"{format_bytes(avail)} is available; use a smaller size or batch ({override})")
