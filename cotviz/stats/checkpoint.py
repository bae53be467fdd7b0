"""Checkpoints of a stats run: one ``.npz`` per rank, written atomically, read without pickle.

A checkpoint holds the rank's :class:`~cotviz.stats.accumulators.Accumulator` as plain arrays (float64 / int64,
so it is restored bit for bit), the next global batch of its shard, the images done and the unreadable files met
so far, and a *fingerprint* of the run (model and weights, preprocessing, data list, stages, quantities, classes,
bins, batch size, world size): ``--resume`` refuses a checkpoint made by another run in one line. The file is
written through :func:`cotviz.io.outputs.write_npz` (temporary name + ``os.replace``: a kill during the write
leaves the previous checkpoint) and read with ``numpy.load(allow_pickle=False)``; the metadata is UTF-8 JSON
stored as a uint8 array.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cotviz.errors import CheckpointError, InvalidArgumentError
from cotviz.io.outputs import json_text, write_npz
from cotviz.stats.accumulators import Accumulator

__all__ = ["FORMAT", "Checkpoint", "checkpoint_path", "load_checkpoint", "save_checkpoint"]

FORMAT = "cotviz-stats-checkpoint"
VERSION = 1
_ARRAYS = ("lo", "hi", "bins", "count", "nonfinite", "minimum", "maximum", "hist", "tree_blocks", "tree_moments")


@dataclass
class Checkpoint:
    """What a rank has done: its accumulator, the next global batch, images done, failures, the run's fingerprint."""

    accumulator: Accumulator
    next_batch: int
    images: int
    failures: list[dict[str, Any]]
    fingerprint: dict[str, Any]
    complete: bool = False


def checkpoint_path(directory: Path, rank: int, world_size: int) -> Path:
    """``<directory>/rank<R>-of-<W>.npz``."""
    return Path(directory) / f"rank{rank}-of-{world_size}.npz"


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` atomically to ``path``."""
    meta = {"format": FORMAT, "version": VERSION, "next_batch": ckpt.next_batch, "images": ckpt.images,
            "failures": ckpt.failures, "fingerprint": ckpt.fingerprint, "complete": ckpt.complete}
    arrays = dict(ckpt.accumulator.to_arrays())
    arrays["meta"] = np.frombuffer(json_text(meta).encode("utf-8"), dtype=np.uint8)
    write_npz(path, arrays)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle; shapes and fields checked).

    Raises:
        CheckpointError: the file is not such a checkpoint or is damaged.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CheckpointError(f"cannot read the stats checkpoint {path} ({err}); delete it or run without "
                              "--resume") from None
    missing = [k for k in (*_ARRAYS, "meta") if k not in arrays]
    if missing:
        raise CheckpointError(f"{path} is not a cotviz stats checkpoint (no {', '.join(missing)}); delete it or "
                              "run without --resume")
    try:
        meta = json.loads(arrays.pop("meta").astype(np.uint8).tobytes().decode("utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
        acc = Accumulator.from_arrays(arrays)
        return Checkpoint(acc, int(meta["next_batch"]), int(meta["images"]), list(meta["failures"]),
                          dict(meta["fingerprint"]), bool(meta["complete"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, InvalidArgumentError) as err:
        raise CheckpointError(f"the stats checkpoint {path} is damaged ({err}); delete it or run without "
                              "--resume") from None
