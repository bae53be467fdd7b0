"""cotnet50 vs resnet50 forward latency on this machine: eager, folded and compiled, measured side by side.

Same skeleton, same threads, same input. For every batch size, all configurations -- each model x
preparation (``eager``; ``folded`` = :func:`cotviz.prepare_for_inference` on both: BatchNorms folded, 1x1
convolutions through oneDNN; ``compiled`` = ``torch.compile`` of the folded models, opt-in with ``--compile``) x
memory format (NCHW, channels-last) --
run interleaved, round after round (A, B, C, ... A, B, C, ...), and the medians are compared, so machine
noise hits all of them alike. The ratio of a preparation compares each model in its best memory format
(``best``) and, for reference, both in each format. Prints tables; nothing is asserted.

    python benchmarks/bench_models.py                 # eager + folded, batch 1 and 8, both formats (~2-3 min)
    python benchmarks/bench_models.py --compile       # + torch.compile of both folded models, channels-last
                                                      # (compile time printed; adds minutes, see --help)
    python benchmarks/bench_models.py --quick         # fewer rounds, for a first look (~1 min)
    python benchmarks/bench_models.py --threads 1 --cpu-time   # CPU time per forward: robust on a loaded machine

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here (set before torch loads OpenMP): with the default spin
policy, 2 intra-op threads on a 2-core machine shared with other processes made a resnet50 batch-1 forward
1.1-3.3 s instead of 0.22-0.28 s (measured at load average ~4). Set it in the environment to override.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from cotviz import prepare_for_inference  # noqa: E402
from cotviz.models import create_model  # noqa: E402

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


@dataclass(frozen=True)
class Config:
    """One timed configuration: a model, its preparation and memory format."""

    model: str
    prep: str
    fmt: str


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def _to_format(model: nn.Module, fmt: str) -> nn.Module:
    """``model`` with its 4-D parameters in memory format ``fmt`` (in place)."""
    return model.to(memory_format=FORMATS[fmt])  # type: ignore[call-overload]  # missing from torch's stubs


def _build(names: list[str], preps: list[str], formats: list[str], size: int, compile_mode: str | None,
           compile_format: str) -> tuple[dict[Config, Callable[[torch.Tensor], torch.Tensor]], dict[str, float]]:
    """Every configuration's forward; compiled ones (``compile_format`` only) are compiled here, by their
    first call at batch 1, which is timed."""
    fns: dict[Config, Callable[[torch.Tensor], torch.Tensor]] = {}
    compile_s: dict[str, float] = {}
    for name in names:
        base = create_model(name).eval()
        for fmt in formats:
            eager = _to_format(copy.deepcopy(base), fmt)
            folded: nn.Module | None = None
            for prep in preps:
                if prep == "compiled" and fmt != compile_format:
                    continue
                if prep == "eager":
                    fns[Config(name, prep, fmt)] = eager
                    continue
                if folded is None:
                    folded = _to_format(prepare_for_inference(copy.deepcopy(base)), fmt)
                if prep == "folded":
                    fns[Config(name, prep, fmt)] = folded
                else:  # compiled
                    fn = torch.compile(folded, mode=compile_mode, dynamic=False)
                    x = torch.randn(1, 3, size, size).contiguous(memory_format=FORMATS[fmt])
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        fn(x)
                    compile_s[f"{name} {fmt}"] = time.perf_counter() - t0
                    fns[Config(name, prep, fmt)] = fn
        del base
    return fns, compile_s


def _measure(fns: dict[Config, Callable[[torch.Tensor], torch.Tensor]], batch: int, size: int,
             rounds: int, clock: Callable[[], float]) -> dict[Config, float]:
    """Median seconds (of ``clock``) per forward of every configuration, all interleaved round by round."""
    inputs = {fmt: torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
              .contiguous(memory_format=FORMATS[fmt]) for fmt in FORMATS}
    times: dict[Config, list[float]] = {c: [] for c in fns}
    with torch.inference_mode():
        for c, fn in fns.items():  # warm-up: allocator, oneDNN primitive caches, compiled shape guards
            t0 = time.perf_counter()
            fn(inputs[c.fmt])
            if c.prep == "compiled" and time.perf_counter() - t0 > 1.0:
                print(f"  first call at batch {batch} (a recompile for this shape) {c.model} {c.fmt}: "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
        for _ in range(rounds):
            for c, fn in fns.items():
                t0 = clock()
                fn(inputs[c.fmt])
                times[c].append(clock() - t0)
    return {c: statistics.median(ts) for c, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", nargs=2, default=["cotnet50", "resnet50"], metavar=("A", "B"),
                    help="the ratio is A / B")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, nargs="+", default=None,
                    help="interleaved rounds per batch size (default 15 at batch <= 2, else 7; --quick: 5 / 3)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    ap.add_argument("--no-fold", action="store_true", help="eager only (no prepare_for_inference)")
    ap.add_argument("--compile", action="store_true",
                    help="also torch.compile both folded models (inductor; compile time printed)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    ap.add_argument("--compile-format", choices=list(FORMATS), default="channels_last",
                    help="the one memory format compiled models run in (inductor picks its own conv layouts)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time the CPU time of the calling thread instead of wall time (needs --threads 1, where "
                         "all compute runs on that thread): what a forward costs, without the time other "
                         "processes take the core away -- for a loaded machine")
    args = ap.parse_args()
    if args.cpu_time and args.threads != 1:
        ap.error("--cpu-time needs --threads 1 (other intra-op threads' CPU time would not be counted)")
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    preps = ["eager"] + ([] if args.no_fold else ["folded"]) + (["compiled"] if args.compile else [])
    a_name, b_name = args.models
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_WAIT_POLICY "
          f"{os.environ['OMP_WAIT_POLICY']}, input {args.size}px, inference_mode, "
          f"{'CPU time of the calling thread' if args.cpu_time else 'wall time'}; load average {_load()} at start")
    t_build = time.perf_counter()
    formats = list(dict.fromkeys([*args.formats, *([args.compile_format] if args.compile else [])]))
    fns, compile_s = _build(args.models, preps, formats, args.size, args.compile_mode, args.compile_format)
    print(f"built {len(fns)} configurations in {time.perf_counter() - t_build:.1f} s")
    for key, sec in compile_s.items():
        print(f"  compile + first call (batch 1) {key}: {sec:.1f} s")
    header = (f"{'prep':>8}  {'batch':>5}  {'format':>13}  {a_name + ' ms':>12}  {b_name + ' ms':>12}  {'ratio':>6}")
    print(header, flush=True)
    for i, batch in enumerate(args.batches):
        if args.rounds:
            rounds = args.rounds[min(i, len(args.rounds) - 1)]
        else:
            rounds = (15 if batch <= 2 else 7) if not args.quick else (5 if batch <= 2 else 3)
        med = _measure(fns, batch, args.size, rounds, clock)
        rows: list[str] = []
        for prep in preps:
            fmts = [f for f in formats if Config(a_name, prep, f) in med]
            for fmt in fmts:
                ta, tb = med[Config(a_name, prep, fmt)], med[Config(b_name, prep, fmt)]
                rows.append(f"{prep:>8}  {batch:>5}  {fmt:>13}  {ta * 1e3:>12.1f}  {tb * 1e3:>12.1f}  {ta / tb:>6.3f}")
            if len(fmts) < 2:
                continue
            fa = min(fmts, key=lambda f: med[Config(a_name, prep, f)])
            fb = min(fmts, key=lambda f: med[Config(b_name, prep, f)])
            ta, tb = med[Config(a_name, prep, fa)], med[Config(b_name, prep, fb)]
            rows.append(f"{prep:>8}  {batch:>5}  {'best':>13}  {ta * 1e3:>12.1f}  {tb * 1e3:>12.1f}  {ta / tb:>6.3f}"
                        f"   ({a_name} {fa}, {b_name} {fb}; {rounds} rounds, load {_load()})")
        print("\n".join(rows), flush=True)
    print(f"load average {_load()} at end")


if __name__ == "__main__":
    main()
