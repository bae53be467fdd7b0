"""``compute_stats``: CoT statistics over a whole dataset, streaming, resumable, data-parallel under torchrun.

Per rank: list the dataset (sorted, the same on every rank) -> take this rank's exact, batch-aligned shard
(:mod:`cotviz.stats.sharding`) -> read the calibration images and fix the series and histogram ranges
(:mod:`cotviz.stats.layout`; rank 0's ranges broadcast) -> stream the shard: decode in ``DataLoader`` workers
(:func:`cotviz.explain.loader.load_batches`), one forward per batch in inference mode under
:func:`cotviz.capture.capture` in streaming mode (``on_record``: each block's record is reduced to per-series
batch statistics as soon as the block ran and then dropped, so memory does not grow with the number of images),
add the batch to the :class:`~cotviz.stats.accumulators.Accumulator`, checkpoint every N images -> merge the
ranks' accumulators (:mod:`cotviz.stats.distributed`) -> rank 0 writes the outputs.

A file that cannot be read is reported, counted and skipped; the run goes on. The library prints nothing: pass
``progress=`` to follow the run.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cotviz.capture import Record, capture, cot_blocks, stage_range
from cotviz.errors import CheckpointError, ImageError, InvalidArgumentError
from cotviz.explain.inputs import Prepared
from cotviz.explain.loader import Failure, check_batch_size, check_workers, default_workers, load_batches
from cotviz.explain.runner import (
    UntrainedModelWarning,
    preprocess_config,
    untrained_message,
)
from cotviz.io import PreprocessConfig
from cotviz.io.outputs import json_ready
from cotviz.models.untrained import LoadedModel, describe_model, finish_model, new_model
from cotviz.resources import parse_device
from cotviz.stats import distributed as dist_ops
from cotviz.stats.accumulators import Accumulator, BatchPartial
from cotviz.stats.catalog import STAT_INFO, parse_stat_names
from cotviz.stats.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, save_checkpoint
from cotviz.stats.dataset import StatsData, list_dataset
from cotviz.stats.layout import Layout, block_layout, record_values
from cotviz.stats.result import StatsResult
from cotviz.stats.sharding import Shard, shard

__all__ = ["DTYPES", "Progress", "compute_stats", "parse_stages"]

#: ``--dtype`` names.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Progress:
    """Where this rank's run is, after each batch (what ``progress=`` receives).

    ``done`` / ``total``: items of the shard read so far (readable or not) / in the shard; ``resumed``: items done
    before this session (from the checkpoint); ``images``: readable images accumulated; ``failed``: unreadable
    files; ``seconds``: wall time of this session's loop; ``skipped``: the unreadable files of this batch (one-line
    messages).
    """

    rank: int
    world_size: int
    done: int
    total: int
    resumed: int
    images: int
    failed: int
    seconds: float
    skipped: tuple[str, ...] = ()


def parse_stages(stages: str | int | Iterable[int] | None, valid: range) -> tuple[int, ...]:
    """``"1-4"``, ``"2,3"``, ``3``, ``[3, 4]`` or None (every stage) -> sorted stage numbers within ``valid``."""
    if stages is None:
        return tuple(valid)
    if isinstance(stages, str):
        out: list[int] = []
        for part in (p.strip() for p in stages.split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
            except ValueError:
                raise InvalidArgumentError(f"--stages takes stage numbers and ranges like 1-4 or 2,3; got "
                                           f"{stages!r}") from None
        items = out
    elif isinstance(stages, int) and not isinstance(stages, bool):
        items = [stages]
    else:
        items = list(stages)  # type: ignore[arg-type]
    if not items:
        raise InvalidArgumentError(f"--stages selects no stage: {stages!r}")
    for s in items:
        if isinstance(s, bool) or not isinstance(s, int) or s not in valid:
            raise InvalidArgumentError(f"stage {s} out of range: the model has stages {valid.start}..{valid.stop - 1}")
    return tuple(sorted(set(items)))


def _load(model: nn.Module | str | LoadedModel, weights: str | os.PathLike[str] | None, num_classes: int | None,
          allow_nonfinite: bool, warn: bool) -> LoadedModel:
    """The network, built like every command builds it (the untrained-model policy of cotviz.models.untrained)."""
    if isinstance(model, str):
        from cotviz.models import resolve_name

        name = resolve_name(model)
        net = new_model(name, untrained=weights is None, num_classes=num_classes)
        loaded = finish_model(net, name, weights, allow_nonfinite=allow_nonfinite)
        if loaded.untrained and warn:
            warnings.warn(untrained_message(name), UntrainedModelWarning, stacklevel=3)
        return loaded
    if weights is not None or num_classes is not None:
        raise InvalidArgumentError("weights= and num_classes= apply to a model name; load the checkpoint into your "
                                   "network yourself (cotviz.load_checkpoint)")
    loaded = model if isinstance(model, LoadedModel) else describe_model(model)
    if loaded.model.training:
        raise InvalidArgumentError(f"{loaded.name} is in training mode: its statistics would depend on the batch and "
                                   "BatchNorm would update; call model.eval() first")
    return loaded


def _placed(loaded: LoadedModel, device: torch.device | None, dtype: torch.dtype | None,
            owned: bool) -> nn.Module:
    """The network on ``device`` in ``dtype`` (a copy when the caller's network would have to change)."""
    net = loaded.model
    param = next(net.parameters(), None)
    here = param.device if param is not None else torch.device("cpu")
    kind = param.dtype if param is not None else torch.float32
    if (device is None or device == here) and (dtype is None or dtype == kind):
        return net
    if not owned:
        net = copy.deepcopy(net)
    return net.to(device=device, dtype=dtype)


class _Run:
    """One rank's pass (state shared by the calibration and the main loop)."""

    def __init__(self, net: nn.Module, names: tuple[str, ...], stages: tuple[int, ...], taps: tuple[str, ...],
                 device: torch.device, dtype: torch.dtype) -> None:
        self.net, self.names, self.stages, self.taps = net, names, stages, taps
        self.device, self.dtype = device, dtype

    def forward(self, tensors: Sequence[torch.Tensor], on_record: Callable[[Record], object]) -> None:
        x = torch.stack(list(tensors)).to(self.device, self.dtype)  # (B, 3, S, S)
        with torch.inference_mode(), capture(self.net, stages=list(self.stages), taps=self.taps, device=None,
                                             on_record=on_record):
            self.net(x)


def _calibrate(run: _Run, data: StatsData, cfg: PreprocessConfig, count: int, classes: Sequence[str] | None,
               bins: int) -> tuple[Layout, dict[tuple[str, str], tuple[float, float]], list[str]]:
    """The layout and the histogram ranges from the first ``count`` readable images of the dataset."""
    ready: list[Prepared] = []
    gen = load_batches(data.items, cfg, batch_size=count, workers=0)
    try:
        for batch in gen:
            ready.extend(p for p in batch if isinstance(p, Prepared))
            if len(ready) >= count:
                break
    finally:
        gen.close()
    if not ready:
        raise ImageError(f"none of the {len(data.items)} images under {data.root} can be read")
    ready = ready[:count]
    blocks = []
    top: dict[tuple[str, str], float] = {}

    def on_record(rec: Record) -> None:
        bl = block_layout(rec, run.names)
        if not bl.maps:
            return
        blocks.append(bl)
        for name, smp in record_values(rec, bl.maps).items():
            vals = torch.cat([smp.all.reshape(-1), smp.heads.reshape(-1)]).double()
            vals = vals[torch.isfinite(vals)]
            top[(bl.name, name)] = float(vals.max()) if vals.numel() else 0.0

    run.forward([p.tensor for p in ready], on_record)
    if not blocks:
        raise InvalidArgumentError(f"no block of stages {', '.join(map(str, run.stages))} has the taps of "
                                   f"{', '.join(run.names)}")
    layout = Layout(blocks, classes, bins)
    return layout, layout.ranges(top), [p.source for p in ready]


def _observe(layout: Layout, part: BatchPartial, labels: torch.Tensor | None) -> Callable[[Record], None]:
    """The streaming-capture callback: one record -> its series' batch statistics (the record is then dropped)."""
    by_name = {b.name: b for b in layout.blocks}

    def on_record(rec: Record) -> None:
        bl = by_name.get(rec.name)
        if bl is None:
            return
        for name, smp in record_values(rec, bl.maps).items():
            off = layout.offsets[(bl.name, name)]
            m = smp.heads.shape[0]
            if smp.rows is not None:  # head "all" and the heads in one call, read in place
                part.observe(torch.arange(off, off + 1 + m), smp.rows.reshape(m + 1, -1))
            else:  # fusion weights: C samples per image for "all", C/M per head
                part.observe(torch.tensor([off]), smp.all.reshape(1, -1))
                part.observe(torch.arange(off + 1, off + 1 + m), smp.heads.reshape(m, -1))
            full = smp.all
            if labels is not None:
                coff = layout.class_offsets[(bl.name, name)]
                dev_labels = labels.to(full.device)
                for c in torch.unique(labels).tolist():
                    rows = full[dev_labels == c]  # (b_c, N)
                    part.observe(torch.tensor([coff + c]), rows.reshape(1, -1))

    return on_record


def _fingerprint(loaded: LoadedModel, data: StatsData, cfg: PreprocessConfig, layout: Layout, sh: Shard,
                 dtype: torch.dtype, calibration_images: int) -> dict[str, Any]:
    """What a checkpoint was made for, JSON-ready (as a checkpoint stores it, so the two compare equal)."""
    w = loaded.weights
    return json_ready({"model": loaded.name, "weights": None if w is None else w.sha256, "untrained": loaded.untrained,
                       "data": data.digest(), "images": len(data.items), "preprocessing": asdict(cfg),
                       "layout": layout.describe(), "batch_size": sh.batch_size, "world_size": sh.world_size,
                       "rank": sh.rank, "dtype": str(dtype).replace("torch.", ""),
                       "calibration_images": calibration_images})


def _agree(world: dist_ops.World, ok: bool) -> bool:
    """True on every rank when ``ok`` on every rank (a collective decision, so no rank waits alone)."""
    if not world.distributed:
        return ok
    return dist_ops.sum_int(int(ok)) == world.size


def compute_stats(model: nn.Module | str | LoadedModel, data: str | os.PathLike[str] | Sequence[Any] | StatsData, *,
                  weights: str | os.PathLike[str] | None = None, num_classes: int | None = None,
                  stages: str | int | Iterable[int] | None = None, maps: Iterable[str] | None = None,
                  by_class: bool = False, batch_size: int = 16, workers: int | None = None,
                  device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                  checkpoint_every: int | None = None, resume: bool = False, out: str | os.PathLike[str] | None = None,
                  checkpoint_dir: str | os.PathLike[str] | None = None,
                  preprocess: PreprocessConfig | Mapping[str, Any] | None = None,
                  bins: int = 64, calibration_images: int = 16, allow_nonfinite: bool = False,
                  figures: bool = True, figure_stage: int | None = None, figure_format: str = "png",
                  progress: Callable[[Progress], object] | None = None) -> StatsResult:
    """Statistics of every (stage, block, head, quantity) of ``model`` over the images of ``data``.

    Args:
        model: a registered name (built like the CLI builds it: ``weights`` loaded safely, else the untrained demo
            network with an :class:`~cotviz.explain.UntrainedModelWarning`), a network in eval mode, or a
            :class:`~cotviz.models.untrained.LoadedModel`.
        data: a folder / class-folder tree / glob / list file (:func:`cotviz.stats.dataset.list_dataset`), a list
            of paths, or a :class:`~cotviz.stats.dataset.StatsData`.
        stages: ``"1-4"``, ``[3]``, ... (default: every stage). maps: names of
            :data:`cotviz.stats.catalog.STAT_INFO` (default: all).
        by_class: also per class (the first-level folder), head "all" only.
        batch_size: images per forward. workers: decoding processes (default from the CPU count).
        device: ``cpu`` / ``cuda`` / ``cuda:N`` (under torchrun with ``cuda``: ``cuda:LOCAL_RANK``).
        dtype: ``float32`` / ``bfloat16`` / ``float16`` for the forward (default: the network's).
        checkpoint_every: checkpoint this rank's accumulators every N images. resume: continue from the
            checkpoints (a rank without one starts its shard from the beginning).
        out: write ``stats.json``, ``stats.csv``, ``summary.md``, ``histograms.npz`` and the figures there
            (rank 0). checkpoint_dir: where every rank keeps its checkpoint (default: ``out/checkpoints``).
        preprocess: a :class:`cotviz.io.PreprocessConfig`, or overrides of the model's pretrained preprocessing
            (``{"size": 160, "crop_pct": 1.0, "no_crop": False}``); default: the model's.
        bins: histogram bins per series. calibration_images: images that fix the calibrated histogram ranges.
        figures: with ``out``, also draw the figures. figure_stage: the stage of the per-head figure (default: 3 if
            selected, else the last selected stage). figure_format: png, svg or pdf.
        progress: called with a :class:`Progress` after every batch.

    Returns:
        :class:`~cotviz.stats.result.StatsResult` (the merged statistics, on every rank).

    Raises:
        CotvizError: a bad option (the message names the valid range), no readable image, a checkpoint of another
            run with ``resume``.
    """
    check_batch_size(batch_size)
    for value, what, low in ((bins, "--bins", 1), (calibration_images, "--calibration-images", 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidArgumentError(f"{what} must be at least {low}, got {value}")
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise InvalidArgumentError(f"--checkpoint-every must be at least 1 image, got {checkpoint_every}")
    if (checkpoint_every is not None or resume) and out is None and checkpoint_dir is None:
        raise InvalidArgumentError("checkpoints live in the output directory: pass out= (--out) or checkpoint_dir= "
                                   "with --checkpoint-every / --resume")
    names = parse_stat_names(maps)
    parse_stages(stages, range(1, 5))  # the syntax and 1..4 now, before a model is built or a file listed
    torch_dtype = _parse_dtype(dtype)
    dev = None if device is None else parse_device(str(device))
    dset = data if isinstance(data, StatsData) else list_dataset(data, by_class=by_class)
    if by_class and dset.classes is None:
        raise InvalidArgumentError("by_class=True needs a dataset listed with by_class=True (list_dataset)")
    classes = dset.classes if by_class else None
    n_workers = default_workers(len(dset)) if workers is None else check_workers(workers)
    with dist_ops.process_group(dev or torch.device("cpu")) as world:
        if dev is not None and dev.type == "cuda" and world.distributed and device in ("cuda", torch.device("cuda")):
            dev = torch.device("cuda", world.local_rank)
        if dev is not None and dev.type == "cuda":
            torch.cuda.set_device(dev)
        if world.distributed:  # every rank must shard the same list (the same DATA on every node)
            mine = torch.tensor([int(dset.digest()[:15], 16)], dtype=torch.int64)
            if not _agree(world, bool(torch.equal(dist_ops.broadcast_tensor(mine), mine))):
                raise InvalidArgumentError(f"the ranks list different images under {dset.root} (the sorted lists "
                                           "differ); every node must see the same DATA")
        loaded = _load(model, weights, num_classes, allow_nonfinite, warn=world.rank == 0)
        net = _placed(loaded, dev, torch_dtype, owned=isinstance(model, str))
        param = next(net.parameters())
        run_dev, run_dtype = param.device, param.dtype
        chosen = parse_stages(stages, stage_range(net))
        needed = tuple(dict.fromkeys(t for n in names for t in STAT_INFO[n].taps))
        if not any(b.stage in chosen and set(STAT_INFO[n].taps) <= set(b.taps) for b in cot_blocks(net)
                   for n in names):
            raise InvalidArgumentError(f"no block of stage(s) {', '.join(map(str, chosen))} of {loaded.name} has the "
                                       f"taps of {', '.join(names)} (blocks without a CoT layer have none)")
        if figure_stage is not None and figure_stage not in chosen:
            raise InvalidArgumentError(f"--figure-stage {figure_stage} is not among the selected stages "
                                       f"({', '.join(map(str, chosen))})")
        cfg = preprocess if isinstance(preprocess, PreprocessConfig) else \
            preprocess_config(net, **dict(preprocess or {}))
        out_dir = _out_dir(out)
        ckpt_dir = _out_dir(checkpoint_dir) if checkpoint_dir is not None else \
            None if out_dir is None else _out_dir(out_dir / "checkpoints")
        sh = shard(len(dset), world.size, world.rank, batch_size)
        run = _Run(net, names, chosen, needed, run_dev, run_dtype)
        layout, ranges, calib_sources = _calibrate(run, dset, cfg, calibration_images, classes, bins)
        fingerprint = _fingerprint(loaded, dset, cfg, layout, sh, run_dtype, calibration_images)
        ckpt_file = None if ckpt_dir is None else checkpoint_path(ckpt_dir, world.rank, world.size)
        restored = _restore(ckpt_file, fingerprint) if resume and ckpt_file is not None else None
        ok = not isinstance(restored, str)
        if not _agree(world, ok):
            raise CheckpointError(restored if isinstance(restored, str) else
                                  "--resume: another rank's checkpoint belongs to a different run; delete "
                                  f"{ckpt_dir} or run without --resume")
        ckpt = restored if isinstance(restored, Checkpoint) else None
        lo, hi = (ckpt.accumulator.lo, ckpt.accumulator.hi) if ckpt is not None else layout.edges(ranges)
        if world.distributed:
            lo, hi = dist_ops.broadcast_tensor(lo), dist_ops.broadcast_tensor(hi)
        same = ckpt is None or (torch.equal(ckpt.accumulator.lo, lo) and torch.equal(ckpt.accumulator.hi, hi))
        if not _agree(world, same):
            raise CheckpointError("--resume: the checkpoints' histogram ranges differ between ranks; delete "
                                  f"{ckpt_dir} or run without --resume")
        acc = ckpt.accumulator if ckpt is not None else Accumulator(lo, hi, bins)
        state = _Loop(acc, sh, ckpt)
        seconds = _stream(run, dset, cfg, layout, state, world, n_workers, checkpoint_every, ckpt_file,
                          fingerprint, progress)
        acc = state.acc
        images, failures = state.images, state.failures
        total_batches = -(-len(dset) // batch_size)
        fresh = images - (ckpt.images if ckpt is not None else 0)
        if world.distributed:
            acc = dist_ops.reduce_accumulator(acc, total_batches)
            images = dist_ops.sum_int(images)
            failures = [f for part in dist_ops.gather_bytes(json.dumps(failures).encode("utf-8"))
                        for f in json.loads(part.decode("utf-8"))]
            seconds = dist_ops.max_float(seconds)  # the slowest rank: the parallel loop's wall time
            fresh = dist_ops.sum_int(fresh)
        failures = [{"input": p.item, "error": p.message} for p in dset.problems] + failures
        result = StatsResult(
            layout=layout, accumulator=acc, model=loaded.provenance(), model_name=loaded.name,
            data=dset.describe(),
            run={"images": images, "failed": len(failures), "world_size": world.size, "batch_size": batch_size,
                 "workers": n_workers, "device": str(run_dev), "dtype": str(run_dtype).replace("torch.", ""),
                 "threads_per_rank": torch.get_num_threads(), "seconds": round(seconds, 3),
                 "images_per_second": round(fresh / seconds, 3) if seconds > 0 else None,
                 "resumed": ckpt is not None},
            preprocessing=asdict(cfg),
            calibration={"calibration_images": calib_sources,
                         "ranges": {f"{b}/{m}": [float(lo[layout.offsets[(b, m)]]), float(hi[layout.offsets[(b, m)]])]
                                    for (b, m) in layout.offsets},
                         "note": "uniform bins on [lo, hi] per block and quantity; bounded quantities use their "
                                 "bounds, energies [0, 1.5 x the largest calibration value, rounded up]; column 0 "
                                 "of the counts is below lo, the last above hi"},
            failures=failures)
        if out_dir is not None and world.rank == 0:
            from cotviz.stats.outputs import save_outputs

            save_outputs(result, out_dir, figure_stage=figure_stage, fmt=figure_format, figures=figures)
        if world.distributed:
            import torch.distributed as dist

            dist.barrier()
    return result


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and dtype not in DTYPES.values():
            raise InvalidArgumentError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        return dtype
    if str(dtype) not in DTYPES:
        raise InvalidArgumentError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[str(dtype)]


def _out_dir(out: str | os.PathLike[str] | None) -> Path | None:
    if out is None:
        return None
    from cotviz.io.outputs import ensure_out_dir

    return ensure_out_dir(Path(out))


def _restore(path: Path, fingerprint: dict[str, Any]) -> Checkpoint | str | None:
    """This rank's checkpoint (None: there is none), or why it cannot be used (a message)."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        return str(err)
    if ckpt.fingerprint != fingerprint:
        diff = sorted(k for k in fingerprint if ckpt.fingerprint.get(k) != fingerprint[k])
        return (f"--resume: {path} was written by a different run ({', '.join(diff)} differ); rerun with the same "
                "options and data, or without --resume")
    return ckpt


class _Loop:
    """Mutable state of the main loop (kept current so an interruption can still checkpoint it)."""

    def __init__(self, acc: Accumulator, sh: Shard, ckpt: Checkpoint | None) -> None:
        self.acc = acc
        self.shard = sh
        self.next_batch = sh.first_batch if ckpt is None else ckpt.next_batch
        self.images = 0 if ckpt is None else ckpt.images
        self.failures: list[dict[str, Any]] = [] if ckpt is None else list(ckpt.failures)
        self.complete = False if ckpt is None else ckpt.complete

    def checkpoint(self, fingerprint: dict[str, Any]) -> Checkpoint:
        return Checkpoint(self.acc, self.next_batch, self.images, self.failures, fingerprint, self.complete)


def _stream(run: _Run, dset: StatsData, cfg: PreprocessConfig, layout: Layout, state: _Loop,
            world: dist_ops.World, workers: int, every: int | None, ckpt_file: Path | None,
            fingerprint: dict[str, Any], progress: Callable[[Progress], object] | None) -> float:
    """Run this rank's shard from ``state.next_batch`` on; returns the loop's wall time."""
    sh = state.shard
    end_batch = sh.first_batch + sh.batches
    first_item = min(state.next_batch * sh.batch_size, sh.stop)
    resumed = first_item - sh.start
    t0 = time.perf_counter()
    if state.complete or first_item >= sh.stop:
        state.complete = True
        if ckpt_file is not None:
            save_checkpoint(ckpt_file, state.checkpoint(fingerprint))
        return 0.0
    labels_all = None if layout.classes is None or dset.labels is None else torch.tensor(dset.labels)
    gen = load_batches(dset.items[first_item:sh.stop], cfg, batch_size=sh.batch_size, workers=workers)
    since = 0
    try:
        for batch in gen:
            g = state.next_batch
            start = g * sh.batch_size
            ready = [(start + j, p) for j, p in enumerate(batch) if isinstance(p, Prepared)]
            part = state.acc.partial()
            if ready:
                labels = None if labels_all is None else labels_all[[i for i, _ in ready]]
                run.forward([p.tensor for _, p in ready], _observe(layout, part, labels))
            failures = [{"input": str(dset.items[start + j]), "error": f.message}
                        for j, f in enumerate(batch) if isinstance(f, Failure)]
            state.acc.add(g, part)
            state.next_batch, state.images = g + 1, state.images + len(ready)
            state.failures.extend(failures)
            since += len(batch)
            if state.next_batch >= end_batch:
                state.complete = True
            if ckpt_file is not None and (state.complete or (every is not None and since >= every)):
                save_checkpoint(ckpt_file, state.checkpoint(fingerprint))
                since = 0
            if progress is not None:
                done = min(state.next_batch * sh.batch_size, sh.stop) - sh.start
                progress(Progress(world.rank, world.size, done, len(sh), resumed, state.images,
                                  len(state.failures), time.perf_counter() - t0, tuple(f["error"] for f in failures)))
    except BaseException:
        if ckpt_file is not None and every is not None:
            save_checkpoint(ckpt_file, state.checkpoint(fingerprint))  # consistent: at a batch boundary
        raise
    finally:
        gen.close()
    return time.perf_counter() - t0

