"""``cotviz.explain.loader``: batches in input order, failures in place, identical tensors whatever the number of
decoding workers, bounded prefetch, and no worker left behind after an early stop or a crashed worker."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cotviz.explain import Explainer
from cotviz.explain.inputs import Prepared
from cotviz.explain.loader import Failure, ImageDataset, default_workers, load_batches
from cotviz.io import PreprocessConfig

CFG = PreprocessConfig(input_size=64)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            out.update(int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    except OSError:  # the process is gone
        pass
    return out


def _helper(pid: int) -> bool:
    """multiprocessing's forkserver or resource tracker: they stay, idle, for the next pool, and end with this
    process."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # gone
    return b"multiprocessing.forkserver" in cmd or b"multiprocessing.resource_tracker" in cmd


def workers() -> set[int]:
    """Live descendants of this process (Linux /proc), except multiprocessing's own helpers."""
    todo, seen = [os.getpid()], set()
    while todo:
        for child in _children(todo.pop()):
            seen.add(child)
            todo.append(child)
    return {p for p in seen if not _helper(p)}


class LoggedPath(os.PathLike):  # type: ignore[type-arg]
    """A path that appends its index to ``log`` when it is opened (in whichever process decodes it); index
    ``crash`` kills the decoding process instead."""

    def __init__(self, path: Path, index: int, log: Path, crash: int = -1) -> None:
        self.path, self.index, self.log, self.crash = path, index, log, crash

    def __fspath__(self) -> str:
        if self.index == self.crash:
            os.kill(os.getpid(), signal.SIGKILL)
        with open(self.log, "a") as fh:
            fh.write(f"{self.index}\n")
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


def decoded(log: Path) -> set[int]:
    return {int(line) for line in log.read_text().split()} if log.exists() else set()


def flat(batches: list[list[Prepared | Failure]]) -> list[Prepared | Failure]:
    return [p for b in batches for p in b]


def test_batches_keep_input_order_with_failures_in_place_and_workers_give_identical_tensors(
        images: dict[str, Path]) -> None:
    items = [images["a"], images["broken"], images["b"], images["notes"], images["c"]]
    serial = list(load_batches(items, CFG, batch_size=2))
    assert [len(b) for b in serial] == [2, 2, 1]
    out = flat(serial)
    assert [type(p) for p in out] == [Prepared, Failure, Prepared, Failure, Prepared]
    assert [p.source for p in out] == [str(i) for i in items]
    bad = [p for p in out if isinstance(p, Failure)]
    assert [f.index for f in bad] == [1, 3]
    assert "truncated" in bad[0].message and "not an image" in bad[1].message
    assert ImageDataset(items, CFG)[3] == bad[1]  # the dataset returns failures, it never raises

    before = workers()
    parallel = list(load_batches(items, CFG, batch_size=2, workers=2))
    assert [len(b) for b in parallel] == [2, 2, 1]
    for s, p in zip(out, flat(parallel), strict=True):
        if isinstance(s, Failure):
            assert s == p
            continue
        assert isinstance(p, Prepared)
        assert torch.equal(s.tensor, p.tensor) and np.array_equal(s.display, p.display)
        assert (s.crop_box, s.original_size, s.input_format, s.reduction) == \
               (p.crop_box, p.original_size, p.input_format, p.reduction)
    assert workers() <= before  # the workers are gone once the iteration ended


def test_prefetch_is_bounded_and_stopping_early_leaves_no_worker(images: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "log"
    items = [LoggedPath(images["a"], i, log) for i in range(24)]
    before = workers()
    it = load_batches(items, CFG, batch_size=1, workers=2, prefetch=1)
    first = next(it)
    assert isinstance(first[0], Prepared)
    bound = 2 * 1 + 1  # workers x prefetch batches in flight, plus the one handed out
    deadline = time.monotonic() + 10
    while len(decoded(log)) < bound and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # an unbounded loader would run on through all 24 images now
    assert 1 <= len(decoded(log)) <= bound
    it.close()  # what an exception or Ctrl-C in the consumer does
    assert workers() <= before


def test_a_crashed_worker_is_an_error_and_leaves_no_worker(images: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "log"
    items = [LoggedPath(images["a"], i, log, crash=3) for i in range(6)]
    before = workers()
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        list(load_batches(items, CFG, batch_size=2, workers=2))
    assert workers() <= before


def test_stream_with_workers_equals_stream_in_process(tiny: nn.Module, images: dict[str, Path]) -> None:
    explainer = Explainer(tiny, stage=2, preprocess={"size": 64})
    items = [images["a"], images["broken"], images["b"], images["c"]]
    serial = list(explainer.stream(items, batch_size=2))
    parallel = list(explainer.stream(items, batch_size=2, workers=2))
    assert [e.source for e in parallel] == [str(i) for i in items]
    assert [e.error for e in parallel] == [e.error for e in serial] and parallel[1].error is not None
    for s, p in zip(serial, parallel, strict=True):
        assert list(s.maps) == list(p.maps)
        for block in s.maps:
            for name, values in s.maps[block].items():
                assert np.array_equal(values, p.maps[block][name]), f"{block}/{name}"


def test_default_workers_none_for_one_image_and_never_more_than_the_images() -> None:
    assert default_workers(0) == default_workers(1) == 0
    assert 1 <= default_workers(2) <= 2
    assert default_workers(1000) <= max(1, len(os.sched_getaffinity(0)))
