"""cotnet50 vs resnet50 forward latency on this machine, measured side by side.

Same skeleton, same threads, same input; the two models run interleaved (A, B, A, B, ...) and the
medians are compared, so machine noise hits both alike. Prints one table; nothing is asserted.

    python benchmarks/bench_models.py [--repeats 7] [--threads N] [--batches 1 8] [--size 224]

Both memory formats are measured: NCHW (PyTorch's default) and channels-last, which oneDNN's CPU
convolutions prefer (1x1 convs run several times faster); the ratio is what matters.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from cotviz.models import create_model


def _time(fn, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs=2, default=["cotnet50", "resnet50"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--formats", nargs="+", choices=["nchw", "channels_last"], default=["nchw", "channels_last"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a_name, b_name = args.models
    models = {n: create_model(n) for n in args.models}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, input {args.size}px, inference_mode, "
          f"{args.repeats} interleaved repeats, load average {load:.2f} (noisy if > 0.5)")
    print(f"{'format':>13}  {'batch':>5}  {a_name + ' ms':>14}  {b_name + ' ms':>14}  {'ratio':>6}")
    with torch.inference_mode():
        for fmt_name in args.formats:
            fmt = torch.channels_last if fmt_name == "channels_last" else torch.contiguous_format
            for m in models.values():
                m.to(memory_format=fmt)
            for batch in args.batches:
                x = torch.randn(batch, 3, args.size, args.size).contiguous(memory_format=fmt)
                for m in models.values():  # warm-up: allocator, oneDNN primitive caches
                    m(x)
                times: dict[str, list[float]] = {n: [] for n in models}
                for _ in range(args.repeats):
                    for n, m in models.items():
                        times[n].append(_time(m, x))
                ta, tb = statistics.median(times[a_name]), statistics.median(times[b_name])
                print(f"{fmt_name:>13}  {batch:>5}  {ta * 1e3:>14.1f}  {tb * 1e3:>14.1f}  {ta / tb:>6.3f}")

if __name__ == "__main__":
    main()
