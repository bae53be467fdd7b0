"""Measured inference latency and peak memory on a real device.

Latency: ``warmup`` untimed forwards, then ``repeats`` timed forwards (``time.perf_counter`` around
each, with ``torch.cuda.synchronize`` on CUDA), under ``torch.inference_mode``; reported as median,
quartiles, min and max in milliseconds per batch.

Peak memory, honestly labelled:

- CUDA: ``torch.cuda.max_memory_allocated`` during one forward minus the memory allocated before it
  (tensors of the caching allocator; excludes the CUDA context).
- CPU (Linux): growth of the process's resident set during the first forward: ``VmHWM`` (peak RSS) read
  from ``/proc/self/status`` after resetting it through ``/proc/self/clear_refs`` (Linux >= 4.0), minus
  ``VmRSS`` before. Includes allocator slack and library workspaces, excludes the already-resident
  weights. ``tracemalloc`` would not see torch's C++ allocations, so it is not used. Where the reset is
  not allowed, no number is reported (``None``) and the method says why. Garbage left by earlier work
  is collected before the baseline is read and the cyclic collector is paused during the forward, so
  memory freed meanwhile cannot hide the forward's own growth.

Device names go through :func:`cotviz.resources.parse_device`, thread counts through
:func:`cotviz.resources.check_threads` / :func:`~cotviz.resources.torch_threads` (one rule for every command).
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cotviz.errors import InvalidArgumentError
from cotviz.profile.choices import DTYPES, check_choice
from cotviz.resources import check_threads, parse_device, torch_threads

__all__ = ["MeasureOptions", "MeasureResult", "measure_latency", "measure_model", "parse_dtype", "peak_memory", "synchronize"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class MeasureResult:
    """Latency (ms per batch) and peak memory of one model on one device."""

    device: str
    device_name: str
    dtype: str
    channels_last: bool
    batch: int
    size: int
    threads: int
    warmup: int
    repeats: int
    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    times_ms: tuple[float, ...]
    peak_memory_bytes: int | None
    memory_method: str
    torch_version: str

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "times_ms": list(self.times_ms), "iqr_ms": self.iqr_ms,
                "images_per_s": self.batch * 1000.0 / self.median_ms if self.median_ms > 0 else None}


@dataclass(frozen=True)
class MeasureOptions:
    """How to measure (``cotviz profile --measure``): device, memory format, repeats and CPU threads.

    ``device``: ``cpu``, ``cuda`` or ``cuda:N``; ``threads``: torch intra-op threads, between 1 and the CPUs
    this process may use (``None``: keep torch's setting). :meth:`check` validates all of it up front.
    """

    device: str = "cpu"
    channels_last: bool = False
    warmup: int = 3
    repeats: int = 10
    threads: int | None = None

    def check(self) -> MeasureOptions:
        """These options if they can be used here, else one clear error (``InvalidArgumentError``)."""
        parse_device(self.device)
        check_threads(self.threads)
        if self.warmup < 0 or self.repeats < 1:
            raise InvalidArgumentError(f"need --warmup >= 0 and --repeats >= 1, got {self.warmup} and {self.repeats}")
        return self


def parse_dtype(dtype: str) -> torch.dtype:
    """One of :data:`cotviz.profile.choices.DTYPES` (``float32`` / ``float16`` / ``bfloat16``) -> torch dtype,
    or one clear error."""
    result: torch.dtype = getattr(torch, check_choice(dtype, DTYPES, "dtype"))
    return result


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])  # "VmHWM:   123456 kB"
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: write "5" to /proc/self/clear_refs)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} logical CPUs)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(model: nn.Module, x: torch.Tensor, device: torch.device) -> tuple[int | None, str]:
    """Peak memory of one forward (see the module docstring for what each method means)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model(x)
        synchronize(device)
        return (int(torch.cuda.max_memory_allocated(device) - before),
                "torch.cuda.max_memory_allocated during one forward minus the allocated memory before it")
    gc.collect()  # free earlier garbage now: freed during the forward, it would offset the forward's growth
    paused = gc.isenabled()
    gc.disable()
    try:
        rss = _status_kib("VmRSS")
        if rss is None or not _reset_peak_rss():
            model(x)
            return None, "unavailable: needs Linux /proc/self/status and a writable /proc/self/clear_refs"
        model(x)
        hwm = _status_kib("VmHWM")
    finally:
        if paused:
            gc.enable()
    if hwm is None:
        return None, "unavailable: VmHWM not reported by /proc/self/status"
    return (max(hwm - rss, 0) * 1024,
            "peak RSS growth during the first forward (VmHWM after a /proc/self/clear_refs reset minus VmRSS "
            "before); includes allocator slack and library workspaces, excludes resident weights")


def measure_latency(model: nn.Module, *, size: int, batch: int = 1, channels_last: bool = False,
                    warmup: int = 3, repeats: int = 10, threads: int | None = None) -> MeasureResult:
    """Time ``repeats`` inference forwards of ``model`` on a random (batch, 3, size, size) input.

    The model is used where it is (device and dtype of its parameters; convert it first, e.g.
    ``model.to(device, dtype, memory_format=torch.channels_last)``); only its train/eval flag is switched
    to eval for the measurement and restored after. ``channels_last`` sets the input's memory format.

    Args:
        threads: CPU intra-op threads for the measurement, between 1 and the CPUs this process may use
            (``None``: keep the current setting); the previous setting is restored afterwards.
    """
    if size < 1 or batch < 1 or warmup < 0 or repeats < 1:
        raise InvalidArgumentError(f"need size, batch, repeats >= 1 and warmup >= 0; got size={size}, "
                                   f"batch={batch}, warmup={warmup}, repeats={repeats}")
    check_threads(threads)
    param = next(iter(model.parameters()), None)
    dev = param.device if param is not None else torch.device("cpu")
    dt = param.dtype if param is not None else torch.get_default_dtype()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    try:
        with torch_threads(threads):
            model.eval()
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch, 3, size, size, generator=gen).to(device=dev, dtype=dt, memory_format=fmt)
            with torch.inference_mode():
                peak, method = peak_memory(model, x, dev)
                for _ in range(warmup):
                    model(x)
                synchronize(dev)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    model(x)
                    synchronize(dev)
                    times.append((time.perf_counter() - t0) * 1000.0)
            used_threads = torch.get_num_threads()
    finally:
        model.train(was_training)
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return MeasureResult(
        device=str(dev), device_name=_device_name(dev), dtype=str(dt).replace("torch.", ""),
        channels_last=channels_last, batch=batch, size=size, threads=used_threads, warmup=warmup, repeats=repeats,
        median_ms=statistics.median(times), q1_ms=q[0], q3_ms=q[2], min_ms=min(times), max_ms=max(times),
        times_ms=tuple(times), peak_memory_bytes=peak, memory_method=method, torch_version=torch.__version__)


def measure_model(name: str, *, size: int, batch: int = 1, device: str = "cpu", dtype: str = "float32",
                  channels_last: bool = False, warmup: int = 3, repeats: int = 10, threads: int | None = None,
                  memory_check: bool = True) -> MeasureResult:
    """Build a registered model (random init, seed 0) on ``device``/``dtype`` and :func:`measure_latency` it.

    Latency does not depend on the weight values, so a randomly initialised model times like a trained one.

    Args:
        memory_check: first estimate the forward's memory on the meta device
            (:func:`cotviz.profile.estimate_forward_memory`) and refuse with ``ResourceLimitError`` if this
            machine (or the CUDA device) has less available; ``False`` tries anyway.
    """
    from cotviz.models.registry import create_model, resolve_name

    name = resolve_name(name)
    options = MeasureOptions(device, channels_last, warmup, repeats, threads).check()
    dev, dt = parse_device(options.device), parse_dtype(dtype)
    if memory_check:
        from cotviz.profile.api import check_forward_memory, estimate_forward_memory

        check_forward_memory(estimate_forward_memory(name, size=size, batch=batch, dtype=dtype), name,
                             size=size, batch=batch, device=dev)
    model = create_model(name, seed=0).to(device=dev, dtype=dt)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return measure_latency(model, size=size, batch=batch, channels_last=channels_last, warmup=warmup,
                           repeats=repeats, threads=threads)
