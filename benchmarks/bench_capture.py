"""Cost of :func:`cotviz.capture.capture`: plain forward vs capture of stage 3 vs capture of all stages.

Runs the three modes interleaved (plain, stage 3, all, plain, ...) so that machine load drifts hit all
of them alike, and prints per-mode medians of wall time and of process CPU time (less sensitive to
other processes on a shared machine), ratios to the plain forward and the bytes each capture stores. Also prints the number of hooks installed on the model when no capture is active (must be 0).
Targets: stage 3 <= 1.10x (aim 1.05x), all stages <= 1.25x. Not a test: nothing is asserted.

    python benchmarks/bench_capture.py                    # cotnet50, batch 8, 224, 5 repeats
    python benchmarks/bench_capture.py --batch 2 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from cotviz.capture import capture, count_hooks
from cotviz.models import create_model

MB = 1024 * 1024


def _plain(model: nn.Module, x: torch.Tensor) -> int:
    model(x)
    return 0


def _captured(**kwargs: object) -> Callable[[nn.Module, torch.Tensor], int]:
    def run(model: nn.Module, x: torch.Tensor) -> int:
        with capture(model, **kwargs) as cap:  # type: ignore[arg-type]
            model(x)
        return cap.nbytes

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cotnet50")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fp16", action="store_true", help="also time all stages stored as float16")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = create_model(args.model)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    modes: dict[str, Callable[[nn.Module, torch.Tensor], int]] = {
        "plain forward": _plain,
        "capture stage 3": _captured(stages=[3]),
        "capture all stages": _captured(),
    }
    if args.fp16:
        modes["capture all, float16"] = _captured(dtype=torch.float16)
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    stored: dict[str, int] = {}
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, "
          f"{args.repeats} interleaved repeats (+1 warm-up), torch {torch.__version__}")
    with torch.no_grad():
        for rep in range(args.repeats + 1):
            for name, fn in modes.items():
                t0, c0 = time.perf_counter(), time.process_time()
                stored[name] = fn(model, x)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if rep > 0:
                    times[name].append(dt)
                    cpu[name].append(dc)
    base = statistics.median(times["plain forward"])
    base_cpu = statistics.median(cpu["plain forward"])
    print(f"{'mode':<24}{'wall med s':>11}{'min s':>8}{'ratio':>8}{'cpu med s':>11}{'ratio':>8}{'stored MB':>11}")
    for name in modes:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"{name:<24}{med:>11.3f}{min(times[name]):>8.3f}{med / base:>7.3f}x"
              f"{med_cpu:>11.3f}{med_cpu / base_cpu:>7.3f}x{stored[name] / MB:>11.1f}")
    # load-independent view of the hook cost: the copies themselves, outside the forward
    with torch.no_grad(), capture(model) as cap:
        model(x)
    tensors = [t for r in cap.values() for t in r.tensors().values()]
    copy_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        copies = [t.clone() for t in tensors]
        copy_times.append(time.perf_counter() - t0)
        del copies
    print(f"copying what 'all stages' stores ({len(tensors)} tensors, {cap.nbytes / MB:.0f} MB) takes "
          f"{min(copy_times):.3f} s = {min(copy_times) / base:.1%} of the plain forward")
    print(f"hooks installed with no capture active: {count_hooks(model)}")
    with capture(model, stages=[3]):
        print(f"hooks installed during a stage-3 capture: {count_hooks(model)}")
    print(f"hooks installed after it: {count_hooks(model)}")


if __name__ == "__main__":
    main()
