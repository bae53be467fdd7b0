"""Throughput of ``cotviz stats``: the stats pass vs a bare forward, decoding workers 0 vs 2, 1 vs 2 torchrun processes.

Three measurements on the same images (random photographs-sized PNGs written to a temporary folder):

1. **stats pass vs bare forward**, per batch of ``--batch`` pre-decoded images: ``model(x)`` in inference mode vs
   the same forward under the streaming capture with every series accumulated (every stage, every quantity),
   interleaved round by round (the order alternates), medians. Target: the stats pass costs <= 1.3x the bare
   forward at batch 16 on CPU.
2. **workers 0 vs 2**: the whole :func:`cotviz.stats.compute_stats` streaming loop (decode + preprocess +
   forward + accumulate; ``run["images_per_second"]``, excluding the model build and the calibration), interleaved.
3. **1 vs 2 processes**: ``torchrun --nproc_per_node N -m cotviz stats`` with the machine's CPUs split between the
   processes (``--threads cpus/N``), images/s of the parallel loop (the slowest rank).

Run: ``OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_stats.py --images 32 --rounds 5`` (cotnet50 at 224 px;
``--model``, ``--size``; PASSIVE: idle OpenMP threads sleep instead of spinning, as in the test suite).
Report the load (``uptime``) beside the numbers: on a shared machine the absolute figures move, the interleaved
ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cotviz.explain import preprocess_config  # noqa: E402
from cotviz.explain.inputs import prepare  # noqa: E402
from cotviz.models import create_model  # noqa: E402
from cotviz.stats import compute_stats  # noqa: E402
from cotviz.stats.accumulators import Accumulator  # noqa: E402
from cotviz.stats.catalog import DEFAULT_STATS, STAT_INFO  # noqa: E402
from cotviz.stats.dataset import list_dataset  # noqa: E402
from cotviz.stats.runner import _calibrate, _observe, _Run  # noqa: E402


def make_images(folder: Path, n: int, side: int = 320) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)  # smooth-ish: upsampled noise
        Image.fromarray(base).resize((side, side * 3 // 4), Image.Resampling.BILINEAR).save(folder / f"img{i:04d}.png")


def bench_pass(model: torch.nn.Module, data: Path, batch: int, rounds: int, size: int | None) -> dict[str, float]:
    """Bare forward vs stats pass on one pre-decoded batch, interleaved; medians in seconds."""
    cfg = preprocess_config(model, size=size)
    dset = list_dataset(data)
    tensors = [prepare(p, cfg).tensor for p in dset.items[:batch]]
    x = torch.stack(tensors)
    taps = tuple(dict.fromkeys(t for n in DEFAULT_STATS for t in STAT_INFO[n].taps))
    run = _Run(model, DEFAULT_STATS, (1, 2, 3, 4), taps, torch.device("cpu"), torch.float32)
    layout, ranges, _ = _calibrate(run, dset, cfg, min(batch, len(dset)), None, 64)
    lo, hi = layout.edges(ranges)
    acc = Accumulator(lo, hi, 64)
    times: dict[str, list[float]] = {"bare": [], "stats": [], "bare_cpu": [], "stats_cpu": []}

    def bare() -> None:
        with torch.inference_mode():
            model(x)

    def stats_pass() -> None:
        part = acc.partial()
        run.forward(tensors, _observe(layout, part, None))
        acc.add(acc.tree.end or 0, part)

    bare()  # warm-up
    stats_pass()
    for r in range(rounds):
        order = [("bare", bare), ("stats", stats_pass)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            times[f"{name}_cpu"].append(time.process_time() - c0)  # CPU of this process: steadier on a busy machine
    return {k: statistics.median(v) for k, v in times.items()} | {"series": float(len(layout))}


def bench_workers(data: Path, model_name: str, batch: int, rounds: int, size: int | None) -> dict[int, float]:
    """images/s of the streaming loop with 0 and 2 decoding workers, interleaved; medians."""
    rates: dict[int, list[float]] = {0: [], 2: []}
    pre = None if size is None else {"size": size}
    for r in range(rounds):
        for w in (0, 2) if r % 2 == 0 else (2, 0):
            res = compute_stats(model_name, data, batch_size=batch, workers=w, preprocess=pre)
            rates[w].append(float(res.run["images_per_second"]))
    return {w: statistics.median(v) for w, v in rates.items()}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_processes(data: Path, model_name: str, batch: int, rounds: int, size: int | None) -> dict[int, float]:
    """images/s of torchrun with 1 and 2 processes (CPUs split between them), interleaved; medians."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for r in range(rounds):
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr",
                       "127.0.0.1", "--master_port", str(_port()), "-m", "cotviz", "stats", str(data),
                       "--model", model_name, "--batch-size", str(batch), "--workers", "1", "--threads",
                       str(max(1, cpus // n)), "--out", out, "--json", "--no-figures"]
                if size is not None:
                    cmd += ["--size", str(size)]
                env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cpus // n)), "PYTHONPATH": str(REPO)}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
                if proc.returncode:
                    raise SystemExit(proc.stderr[-3000:])
                rates[n].append(float(json.loads(proc.stdout)["run"]["images_per_second"]))
    return {n: statistics.median(v) for n, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cotnet50")
    ap.add_argument("--size", type=int, default=None, help="input side (default: the model's, 224)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=[], choices=["pass", "workers", "processes"])
    args = ap.parse_args()
    print(f"load: {os.getloadavg()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images"
        make_images(data, args.images)
        if "pass" not in args.skip:
            model = create_model(args.model, seed=0).eval()
            t = bench_pass(model, data, args.batch, args.rounds, args.size)
            print(f"[1] batch {args.batch}, {int(t['series'])} series: bare forward {t['bare']:.3f} s, stats pass "
                  f"{t['stats']:.3f} s -> {t['stats'] / t['bare']:.2f}x wall (target <= 1.3x); "
                  f"{args.batch / t['bare']:.2f} vs {args.batch / t['stats']:.2f} images/s; CPU time "
                  f"{t['bare_cpu']:.3f} vs {t['stats_cpu']:.3f} s -> {t['stats_cpu'] / t['bare_cpu']:.2f}x")
            del model
        if "workers" not in args.skip:
            w = bench_workers(data, args.model, args.batch, max(2, args.rounds // 2), args.size)
            print(f"[2] {args.images} images: workers 0 {w[0]:.2f} images/s, workers 2 {w[2]:.2f} images/s "
                  f"({w[2] / w[0]:.2f}x)")
        if "processes" not in args.skip:
            p = bench_processes(data, args.model, args.batch, max(2, args.rounds // 2), args.size)
            print(f"[3] {args.images} images: 1 process {p[1]:.2f} images/s, 2 processes {p[2]:.2f} images/s "
                  f"({p[2] / p[1]:.2f}x)")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
