"""Benchmark ``cotviz profile`` counting: time after imports and memory, against targets and PyTorch's meta kernels.

Counts ``cotnext101_2x48d`` at 224x224 (build on the meta device + one counted forward) in fresh
subprocesses, so every figure is a cold first count after ``import torch, cotviz.profile``:

- ``fast``: cotviz's counting path (fast meta shape rules, init skipped on meta) -- target < 2 s;
- ``reference``: plain PyTorch: ``with torch.device("meta"): create_model(...)`` and the same counting
  pass with PyTorch's own (Python) meta kernels everywhere (``fast=False``). (The zoo's network init
  already skips itself on meta, so the build row is expected near 1x; cotviz's ``cotviz.models.meta.build_meta_model``
  additionally skips the per-layer ``reset_parameters`` fills of any module.)
- peak RSS growth of the process during the count (``VmHWM`` after a ``/proc/self/clear_refs`` reset,
  minus ``VmRSS`` before) next to the model's fp32 weight size: counting must not materialise weights.

Usage: ``python benchmarks/bench_profile.py [--model NAME] [--size 224] [--repeats 3]``. Prints ratios;
asserts nothing (timings are not tests).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(model: str, size: int, fast: bool) -> dict[str, Any]:
    """One cold count in this (fresh) process; returns timings and memory."""
    t0 = time.perf_counter()
    import torch

    from cotviz.models.meta import build_meta_model
    from cotviz.profile import build_report, count_model

    torch.set_num_threads(2)
    imports = time.perf_counter() - t0
    rss = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        hwm_ok = True
    except OSError:
        hwm_ok = False
    t1 = time.perf_counter()
    if fast:
        meta = build_meta_model(model)
    else:  # plain PyTorch: the meta device context, random init run by the meta kernels
        from cotviz.models import create_model

        with torch.device("meta"):
            meta = create_model(model, seed=None)
    t2 = time.perf_counter()
    result = count_model(meta, (1, 3, size, size), fast=fast)
    t3 = time.perf_counter()
    report = build_report(result, model=model, convention="official")
    t4 = time.perf_counter()
    second = count_model(meta, (1, 3, size, size), fast=fast)
    t5 = time.perf_counter()
    assert [o.macs for o in second.ops] == [o.macs for o in result.ops]
    return {
        "imports_s": imports, "build_s": t2 - t1, "count_s": t3 - t2, "report_s": t4 - t3, "warm_count_s": t5 - t4,
        "rss_growth_bytes": (_status_kib("VmHWM") - rss) * 1024 if hwm_ok else None,
        "weights_fp32_bytes": 4 * report.params, "official_macs": report.macs, "params": report.params,
    }


def _run(model: str, size: int, fast: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--size", str(size)] + ([] if fast else ["--slow"])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cotnext101_2x48d")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per mode")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slow", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.model, args.size, fast=not args.slow)))
        return

    runs = {mode: [_run(args.model, args.size, mode == "fast") for _ in range(args.repeats)]
            for mode in ("fast", "reference")}
    fast, ref = runs["fast"], runs["reference"]
    total = {m: [r["build_s"] + r["count_s"] for r in rs] for m, rs in runs.items()}
    print(f"cotviz profile counting: {args.model} at {args.size}x{args.size}, batch 1 "
          f"({args.repeats} fresh processes per mode, medians; 2 threads)")
    print(f"  params {fast[0]['params']:,}; official-convention MACs {fast[0]['official_macs']:,}")
    print(f"  imports (torch + cotviz.profile)      {_median([r['imports_s'] for r in fast]):7.2f} s")
    print(f"  {'':36s} {'cotviz':>9s} {'torch meta':>11s} {'ratio':>7s}")
    for key, label in (("build_s", "build on meta"), ("count_s", "first counted forward"),
                       ("warm_count_s", "second counted forward")):
        a, b = _median([r[key] for r in fast]), _median([r[key] for r in ref])
        print(f"  {label:36s} {a:8.2f}s {b:10.2f}s {b / a:6.1f}x")
    a, b = _median(total["fast"]), _median(total["reference"])
    print(f"  {'count after imports (build + count)':36s} {a:8.2f}s {b:10.2f}s {b / a:6.1f}x   "
          f"target < 2 s: {a / 2.0:.2f} of budget")
    growth = [r["rss_growth_bytes"] for r in fast if r["rss_growth_bytes"] is not None]
    weights = fast[0]["weights_fp32_bytes"]
    if growth:
        g = _median([float(x) for x in growth])
        print(f"  peak RSS growth while counting        {g / 2**20:7.1f} MiB vs fp32 weights {weights / 2**20:.1f} MiB "
              f"(ratio {g / weights:.3f})")
    else:
        print("  peak RSS growth: unavailable (/proc/self/clear_refs not writable)")


if __name__ == "__main__":
    main()
