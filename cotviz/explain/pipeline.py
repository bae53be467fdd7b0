"""Explain a folder and save every result, with decoding, the forward passes and the figures overlapped.

``cotviz attention`` over many images spends as long drawing and writing figures as computing maps. With
``workers=N`` (:func:`explain_and_save`):

* one :mod:`cotviz.explain.loader` worker decodes and preprocesses the next batches while the model runs;
* the model runs here, on the caller's torch threads, one batch at a time;
* a :class:`SavePool` of ``N`` processes draws and writes each result (:meth:`Explanation.save`: figure, ``.npz``,
  ``.json``, each written atomically) while the next batch is computed. At most ``batch_size + 2 N`` results
  (~0.4 MB each at 224 px) wait for a saver, so memory stays flat in the number of images.

The files are byte-identical to the sequential path (``workers=0``: decode, compute, save, one after the other
in this process, as before). Results come back in input order, each once its files are complete; a file that
cannot be read comes back in its place with ``error`` set, the others are still processed.

Ctrl-C: the savers ignore SIGINT and finish the file they are writing (each write is atomic), the queued saves
are cancelled and the pool is joined before the interrupt propagates, so an interrupted run leaves complete
files only and no process behind. The workers start from a ``forkserver`` that has imported torch, matplotlib
and cotviz once (:func:`cotviz.explain.loader.worker_context`).
"""

from __future__ import annotations

import gc
import os
import signal
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from cotviz.errors import OutputError
from cotviz.explain.loader import PRELOAD as LOADER_PRELOAD
from cotviz.explain.loader import check_workers, worker_context
from cotviz.explain.result import Explanation
from cotviz.io.outputs import OutputPaths, ensure_out_dir, output_bases

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor

    from cotviz.explain.runner import Explainer
    from cotviz.viz.figures import Scale

__all__ = ["SavePool", "Saved", "default_save_workers", "explain_and_save"]

T = TypeVar("T")

#: What the workers' forkserver imports once (the loader's modules and the drawing stack).
PRELOAD = (*LOADER_PRELOAD, "cotviz.viz", "matplotlib.backends.backend_agg")
#: Results waiting for a saver, per saver (the bound on memory in flight).
PENDING_PER_WORKER = 2


@dataclass(frozen=True)
class Saved:
    """One input, done: its explanation (``error`` set if it could not be read) and the files written (None if
    nothing was written)."""

    explanation: Explanation
    files: OutputPaths | None

    @property
    def source(self) -> str:
        return self.explanation.source


#: Fewer images than this are saved in process by default: starting the pool (a forkserver importing torch,
#: matplotlib and cotviz, ~2-3 s of CPU) costs what it saves over ~50 figures. Measured through the CLI on 2 CPUs
#: (cotnet50, stage 3, ``benchmarks/bench_attention.py``): 40 images 13.5 s in process vs 13.9 s with 2 savers,
#: 120 images 30.7 vs 26.9 s.
MIN_POOL_IMAGES = 50


def default_save_workers(n_images: int) -> int:
    """Saving processes for ``n_images``: 0 (save in process, nothing to start) below :data:`MIN_POOL_IMAGES`,
    else one per CPU this process may use, at most 4 and at most the number of images. Drawing and saving a
    figure costs more CPU than computing its maps (cotnet50 stage 3: ~0.15 vs ~0.11 CPU s), so the
    savers get the CPUs and the model one thread (:func:`cotviz.explain.runner.default_threads`)."""
    from cotviz.resources import usable_cpus

    return 0 if n_images < MIN_POOL_IMAGES else max(1, min(usable_cpus(), 4, n_images))


def _init_saver() -> None:
    """A saver: one torch thread, Ctrl-C left to the parent (it cancels the queue; the current file finishes),
    everything imported so far frozen out of the garbage collector's scans."""
    import torch

    import cotviz.viz  # noqa: F401

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    gc.collect()
    gc.freeze()


def _ready() -> int:
    return os.getpid()


def _save(ex: Explanation, out_dir: Path, fmt: str, scale: Scale, dpi: float, base: str) -> OutputPaths:
    try:
        return ex.save(out_dir, fmt, scale=scale, dpi=dpi, base=base)
    finally:
        del ex
        gc.collect()  # the figure is a reference cycle: free it now, not at some later collection


class SavePool:
    """``workers`` processes that save explanations; a context manager (the processes start on entry, so they can
    get ready while the caller builds its model, and are joined on exit, also after an error or Ctrl-C).

    Args:
        workers: saving processes (>= 1).
        pending: results that may wait for a saver beyond one batch (default ``2 * workers``): a run queues at
            most ``batch_size + pending`` results, so the savers have a whole batch to draw while the model
            computes the next one.
    """

    def __init__(self, workers: int, *, pending: int | None = None) -> None:
        if check_workers(workers) < 1:
            raise ValueError("a SavePool needs at least one worker")
        self.workers = workers
        self.pending = pending or PENDING_PER_WORKER * workers
        self._pool: ProcessPoolExecutor | None = None
        self._started: list[Future[int]] = []

    def __enter__(self) -> SavePool:
        # imported here: a one-image run never loads the pool machinery
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(self.workers, mp_context=worker_context(PRELOAD), initializer=_init_saver)
        # start every process now (they are otherwise started on demand)
        self._started = [self._pool.submit(_ready) for _ in range(self.workers)]
        return self

    def wait_ready(self) -> list[int]:
        """Block until the processes started on entry have run their set-up; their process ids."""
        return [_result(future) for future in self._started]

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Cancel what has not started, wait for the saves under way (complete files only), join the processes."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, ex: Explanation, out_dir: Path, fmt: str, scale: Scale, dpi: float, base: str,
               ) -> Future[OutputPaths]:
        if self._pool is None:
            raise RuntimeError("SavePool is not running: use it in a with block")
        return self._pool.submit(_save, ex, out_dir, fmt, scale, dpi, base)


def _result(future: Future[T]) -> T:
    from concurrent.futures.process import BrokenProcessPool

    try:
        return future.result()
    except BrokenProcessPool:
        raise OutputError("a figure-saving process died (out of memory?); rerun with --workers 0 to save in "
                          "the main process") from None


def explain_and_save(explainer: Explainer, paths: Sequence[str | os.PathLike[str]], out_dir: str | Path, *,
                     fmt: str = "png", scale: Scale = "shared", dpi: float = 100, batch_size: int = 8,
                     workers: int = 0, bases: Sequence[str] | None = None, pool: SavePool | None = None,
                     ) -> Iterator[Saved]:
    """Explain ``paths`` with ``explainer`` and save each result under ``out_dir``; yield them in input order,
    each once its files are written.

    Args:
        fmt, scale, dpi: as :meth:`Explanation.save`.
        batch_size: images per forward pass.
        workers: saving processes (0 = decode, compute and save one after the other here; the files are the
            same either way, for the same torch threads). With workers or a pool, one more process decodes the
            next batches.
        bases: file base names per path (default: :func:`cotviz.io.outputs.output_bases`, unique within the run).
        pool: a running :class:`SavePool` to use instead of starting one (``workers`` is then ignored; the
            caller closes it).

    Raises:
        OutputError: a file cannot be written (the run stops; the files already written are complete).
    """
    check_workers(workers)
    out = ensure_out_dir(out_dir)
    items = [Path(p) for p in paths]
    names = list(bases) if bases is not None else output_bases(items, explainer.loaded.name,
                                                                explainer.selection.stage)
    if len(names) != len(items):
        raise ValueError(f"{len(names)} base names for {len(items)} paths")
    if workers == 0 and pool is None:
        return _sequential(explainer, items, names, out, fmt, scale, dpi, batch_size)
    return _pipelined(explainer, items, names, out, fmt, scale, dpi, batch_size, workers, pool)


def _sequential(explainer: Explainer, items: list[Path], names: list[str], out: Path, fmt: str, scale: Scale,
                dpi: float, batch_size: int) -> Iterator[Saved]:
    first = True
    with _frozen_heap():
        for ex, base in zip(explainer.stream(items, batch_size), names, strict=True):
            if ex.error is not None:
                yield Saved(ex, None)
                continue
            if not first:  # free the previous figure (a reference cycle) now, not at some later GC pass
                gc.collect()
            first = False
            yield Saved(ex, ex.save(out, fmt, scale=scale, dpi=dpi, base=base))


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Within: every object alive on entry is frozen (``gc.freeze``), so the collection after each figure scans
    only what the run allocated since -- ~7 instead of ~160 ms per image in a process that has imported torch
    and matplotlib (~220k tracked objects). Unfrozen on exit. Nothing is done if objects are frozen already
    (the console script freezes its start-up heap: :func:`cotviz.cli._common.settle_gc`)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _pipelined(explainer: Explainer, items: list[Path], names: list[str], out: Path, fmt: str, scale: Scale,
               dpi: float, batch_size: int, workers: int, pool: SavePool | None) -> Iterator[Saved]:
    own = pool is None
    savers = SavePool(max(1, workers)) if pool is None else pool
    queue: deque[tuple[Explanation, Future[OutputPaths] | None]] = deque()  # in input order
    results = explainer.stream(items, batch_size, workers=1)  # one decoding worker: ~15 % of a forward's CPU
    limit = batch_size + savers.pending  # results in flight: a batch's worth for the savers while the next computes
    try:
        if own:
            savers.__enter__()
        for ex, base in zip(results, names, strict=True):
            queue.append((ex, None if ex.error is not None else savers.submit(ex, out, fmt, scale, dpi, base)))
            while queue and (len(queue) > limit or queue[0][1] is None or queue[0][1].done()):
                yield _pop(queue)
        while queue:
            yield _pop(queue)
    finally:  # an error, Ctrl-C or the caller stopping early: stop decoding, drop the queue, finish the files
        results.close()
        for _, future in queue:
            if future is not None:
                future.cancel()
        if own:
            savers.close()


def _pop(queue: deque[tuple[Explanation, Future[OutputPaths] | None]]) -> Saved:
    ex, future = queue.popleft()
    return Saved(ex, None if future is None else _result(future))

