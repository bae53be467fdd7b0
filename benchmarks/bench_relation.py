"""Fast local relation vs. the unfold reference on the CoTNet-50 stage shapes (224 input).

Run: ``python benchmarks/bench_relation.py [--threads 2] [--repeats 7]`` (on a busy machine, with
``OMP_WAIT_POLICY=PASSIVE`` and ``--threads 1``: spinning OpenMP threads of oversubscribed cores made the
2-thread timings swing tenfold here).

Prints one table: median wall time of the fast path (``cotviz.ops.relation.local_relation``, the
aggregation's registered weight-gradient operator) and of the unfold reference
(``local_relation_reference``), measured in interleaved repeats on the same tensors and thread count,
and the speed-up (reference / fast). Shapes: query and key (B, C, H, W) with (C, H) = (64, 56),
(128, 28), (256, 14), (512, 7), heads = C/8 (the ``sa`` operator's), K = 3 (``sa``) and K = 7
(``sa:kernel=7``, SASA's window), batch 1 and 8, float32, inference mode; plus forward+backward (batch 8, K = 3)
on every stage shape. Also prints the peak extra memory of one K = 7 call of each (the reference unfolds
the keys: K*K = 49 times their size). Timings are noisy on shared machines: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from bench_aggregation import STAGES, Row, interleaved  # benchmarks/ is the script's directory
from rich.console import Console
from rich.table import Column, Table
from torch import Tensor

from cotviz.ops.relation import local_relation, local_relation_reference

SHARE_PLANES = 8  # heads = C / 8 (the sa operator's default)
NUMBER_COLUMNS = ("fast median (ms)", "reference median (ms)", "speed-up (medians)", "speed-up (best)")

Op = Callable[[Tensor, Tensor, int, int], Tensor]


def make_inputs(batch: int, channels: int, side: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Query and key, (B, C, H, W) float32."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, side, side, generator=gen),
            torch.randn(batch, channels, side, side, generator=gen))


def forward_row(label: str, q: Tensor, k: Tensor, kernel: int, repeats: int) -> Row:
    """Inference-mode forward of both implementations on the same tensors (checked equal first)."""
    heads = q.shape[1] // SHARE_PLANES
    with torch.inference_mode():
        torch.testing.assert_close(local_relation(q, k, kernel, heads),
                                   local_relation_reference(q.double(), k.double(), kernel, heads).float(),
                                   atol=1e-3, rtol=1e-3)
        fast, ref = interleaved(lambda: local_relation(q, k, kernel, heads),
                                lambda: local_relation_reference(q, k, kernel, heads), repeats)
    return Row(label, fast, ref)


def backward_row(label: str, q: Tensor, k: Tensor, kernel: int, repeats: int) -> Row:
    """Forward + backward w.r.t. query and key (autograd through the reference; the registered formulas for fast)."""
    heads = q.shape[1] // SHARE_PLANES
    q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
    grad = torch.randn(q.shape[0], heads, kernel * kernel, *q.shape[2:], generator=torch.Generator().manual_seed(1))

    def step(op: Op) -> Callable[[], object]:
        return lambda: torch.autograd.grad(op(q, k, kernel, heads), (q, k), grad)

    fast, ref = interleaved(step(local_relation), step(local_relation_reference), repeats)
    return Row(label, fast, ref)


def peak_extra_mib(op: Op, q: Tensor, k: Tensor, kernel: int) -> float:
    """Largest temporary of one inference call beyond the result, from the profiler's memory events (MiB)."""
    heads = q.shape[1] // SHARE_PLANES
    with torch.inference_mode(), torch.profiler.profile(profile_memory=True) as prof:
        op(q, k, kernel, heads)
    result = q.shape[0] * heads * kernel * kernel * q.shape[2] * q.shape[3] * q.element_size()
    allocations = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in allocations:  # +bytes on allocation, -bytes on release, in time order
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return max(peak - result, 0) / 2**20


def run(repeats: int) -> tuple[list[Row], list[tuple[str, float, float]]]:
    """All benchmark rows and the memory lines (about a minute on 2 cores)."""
    rows = []
    for kernel in (3, 7):
        for batch in (1, 8):
            for channels, side in STAGES:
                q, k = make_inputs(batch, channels, side)
                rows.append(forward_row(f"K={kernel} B={batch} C={channels} {side}x{side} forward", q, k, kernel,
                                        repeats))
    for channels, side in STAGES:
        q, k = make_inputs(8, channels, side)
        rows.append(backward_row(f"K=3 B=8 C={channels} {side}x{side} fwd+bwd", q, k, 3, repeats))
    memory = []
    for channels, side in STAGES[:1]:
        q, k = make_inputs(8, channels, side)
        memory.append((f"K=7 B=8 C={channels} {side}x{side}", peak_extra_mib(local_relation, q, k, 7),
                       peak_extra_mib(local_relation_reference, q, k, 7)))
    return rows, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats per row (default 7)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=120)
    console.print(f"torch {torch.__version__}, device cpu, torch.get_num_threads() = {torch.get_num_threads()}, "
                  f"heads=C/{SHARE_PLANES}, float32, median of {args.repeats} interleaved repeats")
    started = time.perf_counter()
    console.print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows, memory = run(args.repeats)
    table = Table("case", *(Column(c, justify="right") for c in NUMBER_COLUMNS),
                  title="local relation: fast path vs unfold reference")
    for row in rows:
        table.add_row(row.label, *(f"{v:.2f}" for v in (row.fast.median, row.ref.median)),
                      *(f"{v:.1f}x" for v in (row.ratio, row.best_ratio)))
    console.print(table)
    for label, fast_mib, ref_mib in memory:
        console.print(f"peak temporary beyond the result, {label}: fast {fast_mib:.1f} MiB, reference {ref_mib:.1f} MiB")
    console.print(f"total {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} cores (other processes inflate timings, many small ops the most)")


if __name__ == "__main__":
    main()
