"""What cotviz does on a GPU: one script a CUDA machine runs as is. Prints tables; nothing is asserted.

    python benchmarks/gpu_check.py                    # --device cuda: everything, full settings (~10-20 min)
    python benchmarks/gpu_check.py --no-compile       # without torch.compile (its first call compiles for minutes)
    python benchmarks/gpu_check.py --device cpu --quick   # the same code paths on the CPU, small settings

Sections (each one table):

1. **models** -- cotnet50 vs resnet50 (random weights; BatchNorms folded into the convolutions on both,
   :func:`cotviz.prepare_for_inference`; channels-last on CUDA, NCHW on the CPU) at batch 1 / 8 / 64, eager
   and ``torch.compile``-d (compile time = the first call): median latency per batch, images/s, and the ratio
   cotnet50 / resnet50 (< 1: CoTNet is faster). Configurations are timed interleaved, round after round, so
   drift hits all alike; the CUDA clock is read after ``torch.cuda.synchronize``.
2. **aggregation** -- the registered operator ``torch.ops.cotviz.local_aggregation`` (what the CoT layer runs)
   vs the unfold reference (:func:`cotviz.ops.local_aggregation_reference`) on the device, at the shapes of
   cotnet50's four stages at 224 px: forward and forward + backward, and the largest difference.
3. **attention** -- ``cotviz attention`` over a folder (``--images`` variants of examples/coffee.png, stage 3):
   images/s against the bound of decode + forward + capture alone, with ``--workers 0`` and the default saving
   pool (in process), then the command itself in fresh processes (start-up included).

``--device cuda`` without a usable GPU stops with one line (``error: --device cuda: CUDA is not available here
...``), exit code 2. Where a section cannot run (e.g. ``torch.compile`` without a working compiler), its row
says why and the script goes on. ``--quick``: batches 1 and 2, 64 px for the models and the
aggregation (the attention section keeps 224 px, the command's), 2 rounds, 4 images.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep (see bench_models.py)

HERE = Path(__file__).resolve().parent
MODELS = ("cotnet50", "resnet50")
#: cotnet50's CoT layers at 224 px: (channels, feature side) of stages 1..4 (layer1..layer4).
STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))


@dataclass(frozen=True)
class Settings:
    """What to run, from the command line (:func:`parse_args`)."""

    device: str
    batches: tuple[int, ...]
    size: int
    rounds: int
    repeats: int
    compile: bool
    images: int
    sections: tuple[str, ...]


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="small settings (see above)")
    parser.add_argument("--batches", type=_batches, default=None, help="batch sizes, e.g. 1,8,64 (the default)")
    parser.add_argument("--size", type=int, default=None, help="input side of the models section (default 224)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards per round (default 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--images", type=int, default=None, help="images of the attention section (default 40)")
    parser.add_argument("--only", choices=("models", "aggregation", "attention"), action="append",
                        help="run only this section (repeat for several)")
    args = parser.parse_args(argv)
    quick = args.quick
    settings = Settings(
        device=args.device, batches=args.batches or ((1, 2) if quick else (1, 8, 64)),
        size=args.size or (64 if quick else 224), rounds=args.rounds or (2 if quick else 5),
        repeats=args.repeats or (2 if quick else 5), compile=not args.no_compile,
        images=args.images or (4 if quick else 40),
        sections=tuple(args.only or ("models", "aggregation", "attention")))
    if settings.size < 32 or settings.rounds < 1 or settings.repeats < 1 or settings.images < 2:
        parser.error("--size must be at least 32, --rounds and --repeats at least 1, --images at least 2")
    return settings


def select_device(name: str) -> Any:
    """``torch.device`` for ``name``, or :class:`cotviz.errors.InvalidArgumentError` with one line (no CUDA)."""
    from cotviz.resources import parse_device

    return parse_device(name)


def environment(device: Any) -> list[tuple[str, str]]:
    import torch

    rows = [("torch", torch.__version__), ("device", str(device))]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rows += [("GPU", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs"),
                 ("CUDA / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}")]
    else:
        rows += [("threads", str(torch.get_num_threads())), ("CPUs", str(os.cpu_count()))]
    rows.append(("load average", f"{os.getloadavg()[0]:.1f}"))
    return rows


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain fixed-width table (rich is not needed on a bare GPU box)."""
    cells = [[str(c) for c in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: Any) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------- models


def models_section(s: Settings, device: Any) -> list[list[Any]]:
    """Rows: model, mode, batch, median ms per batch, images/s, cotnet50 / resnet50, compile s (or why not)."""
    import torch

    from cotviz import prepare_for_inference
    from cotviz.models import create_model

    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    nets = {m: prepare_for_inference(create_model(m, seed=0).eval()).to(device, memory_format=fmt) for m in MODELS}
    modes: dict[tuple[str, str], Callable[[Any], Any]] = {(m, "eager"): nets[m] for m in MODELS}
    notes: dict[tuple[str, str], str] = {}
    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, 3, s.size, s.size, generator=gen).to(device, memory_format=fmt) for b in s.batches}
    if s.compile:
        for m in MODELS:
            try:
                compiled = torch.compile(nets[m])
                with torch.inference_mode():
                    seconds = _timed(lambda c=compiled: c(inputs[s.batches[0]]), device)  # type: ignore[misc]
                modes[(m, "compiled")] = compiled
                notes[(m, "compiled")] = f"compiled in {seconds:.0f} s"
            except Exception as err:  # no compiler, unsupported GPU, ...: say so, go on
                notes[(m, "compiled")] = f"torch.compile failed: {type(err).__name__}: {str(err).splitlines()[0]}"
    times: dict[tuple[str, str, int], list[float]] = {(m, mode, b): [] for (m, mode) in modes for b in s.batches}
    with torch.inference_mode():
        for net in modes.values():  # warm-up: every shape once (a compiled net recompiles per batch)
            for b in s.batches:
                net(inputs[b])
        for _ in range(s.rounds):
            for (m, mode, b), ts in times.items():
                run = functools.partial(modes[(m, mode)], inputs[b])
                ts.extend(_timed(run, device) for _ in range(s.repeats))
    rows: list[list[Any]] = []
    for mode in ("eager", "compiled") if s.compile else ("eager",):
        for b in s.batches:
            med = {m: statistics.median(times[(m, mode, b)]) for m in MODELS if (m, mode, b) in times}
            for m in MODELS:
                if m not in med:
                    rows.append([m, mode, b, "-", "-", "-", notes.get((m, mode), "")])
                    continue
                ratio = med["cotnet50"] / med["resnet50"] if len(med) == 2 and m == "cotnet50" else ""
                rows.append([m, mode, b, med[m] * 1000, b / med[m], ratio, notes.get((m, mode), "")])
    return rows


# -------------------------------------------------------------------------------------------- aggregation


def aggregation_section(s: Settings, device: Any) -> list[list[Any]]:
    """Rows: stage, shape, fast / reference forward ms, speed-up, fast / reference fwd+bwd ms, speed-up, max |diff|."""
    import torch

    from cotviz.ops import local_aggregation_reference

    op = torch.ops.cotviz.local_aggregation
    batch = max(s.batches[:2])  # 8 with the defaults, 2 with --quick
    scale = s.size / 224
    rows: list[list[Any]] = []
    gen = torch.Generator().manual_seed(0)
    for stage, (c, side) in enumerate(STAGES, start=1):
        side = max(2, round(side * scale))
        x = torch.randn(batch, c, side, side, generator=gen).to(device)  # (B, C, H, W)
        w = torch.randn(batch, 1, c // 8, 9, side, side, generator=gen).to(device)  # (B, 1, C/8, 3*3, H, W)

        def fast(x: Any = x, w: Any = w) -> Any:
            return op(x, w, 3, 1, 1, 1)

        def ref(x: Any = x, w: Any = w) -> Any:
            return local_aggregation_reference(x, w, 3, 1, 1, 1)

        def fwd_bwd(fn: Callable[..., Any], x: Any = x, w: Any = w) -> None:
            xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
            fn(xg, wg).sum().backward()

        with torch.inference_mode():
            diff = float((fast() - ref()).abs().max())
            fast(), ref()  # warm-up
            t_fast = _median(lambda: fast(), device, s)
            t_ref = _median(lambda: ref(), device, s)
        fwd_bwd(fast)
        fwd_bwd(ref)  # warm-up
        tb_fast = _median(lambda: fwd_bwd(fast), device, s)
        tb_ref = _median(lambda: fwd_bwd(ref), device, s)
        rows.append([f"stage {stage}", f"{batch}x{c}x{side}x{side}", t_fast * 1000, t_ref * 1000, t_ref / t_fast,
                     tb_fast * 1000, tb_ref * 1000, tb_ref / tb_fast, diff])
    return rows


def _median(fn: Callable[[], Any], device: Any, s: Settings) -> float:
    return statistics.median(_timed(fn, device) for _ in range(s.rounds * s.repeats))


# ---------------------------------------------------------------------------------------------- attention


def attention_section(s: Settings, device: Any) -> None:
    sys.path.insert(0, str(HERE))
    import bench_attention as ba

    from cotviz.explain.pipeline import MIN_POOL_IMAGES, default_save_workers

    tmp = Path(tempfile.mkdtemp(prefix="cotviz-gpu-check-"))
    try:
        paths = ba.make_folder(tmp / "photos", s.images)
        workers = default_save_workers(max(len(paths), MIN_POOL_IMAGES))  # the CLI's pool for a large folder
        ba.print_folder(ba.folder_throughput(paths, tmp, workers=workers, rounds=s.rounds, device=str(device)))
        ba.print_folder_cli(ba.folder_cli(tmp / "photos", tmp, workers, s.rounds, device=device.type), len(paths))
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    s = parse_args(argv)
    from cotviz.errors import CotvizError

    try:
        device = select_device(s.device)
    except CotvizError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_table("environment", ("item", "value"), environment(device))
    sections: dict[str, Callable[[], None]] = {
        "models": lambda: print_table(
            f"models: cotnet50 vs resnet50 at {s.size} px, BN folded, {s.rounds} rounds x {s.repeats} forwards",
            ("model", "mode", "batch", "ms/batch", "images/s", "cot/res", "note"), models_section(s, device)),
        "aggregation": lambda: print_table(
            "aggregation: torch.ops.cotviz.local_aggregation (fast) vs the unfold reference, 3x3, ms",
            ("stage", "B x C x H x W", "fast", "ref", "x", "fast fwd+bwd", "ref fwd+bwd", "x", "max |diff|"),
            aggregation_section(s, device)),
        "attention": lambda: attention_section(s, device),
    }
    for name in s.sections:
        try:
            sections[name]()
        except Exception:  # a section that cannot run here says why; the others still run
            print(f"\n{name}: FAILED\n{traceback.format_exc(limit=3)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
