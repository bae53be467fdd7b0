"""Decode and preprocess many images in parallel, batch by batch, in input order: the runner's image loader.

:func:`load_batches` yields lists of :class:`~cotviz.explain.inputs.Prepared` (or :class:`Failure` where an
input cannot be read), ``batch_size`` at a time, in input order. With ``workers=0`` everything happens in this
process, lazily (an iterable of inputs is read as the batches are asked for). With ``workers=N`` a
:class:`torch.utils.data.DataLoader` decodes in ``N`` worker processes:

* the same decoder as in process (:func:`cotviz.explain.inputs.prepare` -> :func:`cotviz.io.load_image`, with its
  pixel and memory limits), so the tensors are identical bit for bit whatever ``workers`` is;
* bounded prefetch: at most ``workers * prefetch`` batches are decoded ahead of the consumer, so memory is flat in
  the number of images;
* the workers start from a forkserver (:func:`worker_context`), not by forking this process;
* a worker runs torch on one thread (the main process keeps the threads its caller set);
* a warning raised while decoding (e.g. :class:`cotviz.io.ImageWarning`) is re-issued in this process, in order;
* the workers are shut down when the iteration ends, is abandoned (``close()``), fails, or is interrupted (Ctrl-C):
  no worker outlives the call. A worker killed by a signal raises ``RuntimeError`` here (the DataLoader's own
  check), after which the remaining workers are shut down too.

As with any ``spawn`` / ``forkserver`` pool, a script that uses workers runs its work under
``if __name__ == "__main__":`` (each worker imports the script's main module; notebooks and ``python -m`` need
nothing).

:func:`default_workers` picks the worker count the CLI uses: none for one image (no process start-up for the
common single-image command), else up to the CPUs this process may use.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from cotviz.errors import CotvizError, InvalidArgumentError
from cotviz.explain.inputs import ImageInput, Prepared, describe_source, prepare
from cotviz.io import PreprocessConfig

__all__ = ["Failure", "ImageDataset", "check_batch_size", "check_workers", "default_workers", "load_batches",
           "worker_context"]

#: What the workers' forkserver imports once, so that each worker it forks starts ready.
PRELOAD = ("cotviz.explain",)

#: At most this many decoding workers by default: decoding (~10-30 ms an image) is a small share of a forward
#: pass, so more workers than this only compete with the model for the CPUs.
MAX_DEFAULT_WORKERS = 4


@dataclass(frozen=True)
class Failure:
    """An input that could not be prepared: its position in the inputs, how it is named, and why (one line)."""

    index: int
    source: str
    message: str


class ImageDataset(Dataset):  # type: ignore[type-arg]
    """``items[i]`` decoded and preprocessed with ``cfg`` (and ``point`` checked against it).

    ``dataset[i]`` is a :class:`Prepared`, or a :class:`Failure` when the input cannot be read or the point lies
    outside it (a :class:`~cotviz.errors.CotvizError` is returned, never raised); other exceptions propagate.

    Args:
        items: paths (or any :data:`~cotviz.explain.inputs.ImageInput`; with worker processes they are pickled).
        cfg: the model's preprocessing.
        point: (x, y) in original-image pixels, or None.
    """

    def __init__(self, items: Sequence[ImageInput], cfg: PreprocessConfig,
                 point: tuple[int, int] | None = None) -> None:
        self.items, self.cfg, self.point = items, cfg, point

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Prepared | Failure:
        return _prepare_one(i, self.items[i], self.cfg, self.point)


def _prepare_one(i: int, item: ImageInput, cfg: PreprocessConfig, point: tuple[int, int] | None,
                 ) -> Prepared | Failure:
    try:
        return prepare(item, cfg, point)
    except CotvizError as err:
        return Failure(i, describe_source(item), str(err))


class _WorkerDataset(Dataset):  # type: ignore[type-arg]
    """:class:`ImageDataset` as the workers run it: each item with the warnings it raised (re-issued by the
    main process, where the user's warning filters live)."""

    def __init__(self, inner: ImageDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[Prepared | Failure, list[tuple[str, type[Warning], str, int]]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self.inner[i]
        return result, [(str(w.message), w.category, w.filename, w.lineno) for w in caught]


def worker_context(preload: Sequence[str] = PRELOAD) -> multiprocessing.context.BaseContext:
    """How cotviz starts worker processes: from a ``forkserver`` (a clean single-threaded process that imports
    ``preload`` once; every worker is forked from it in milliseconds), never ``fork`` from this process, whose
    threads (torch's, a process pool's) the children would inherit in unknown states. ``spawn`` where there is no
    forkserver (Windows, macOS without it). ``preload`` counts only until the forkserver starts."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    return ctx


def _as_list(batch: list[Any]) -> list[Any]:
    """collate_fn: keep the batch as a list (prepared images are stacked by the runner, failures kept in place)."""
    return batch


def _init_worker(_: int) -> None:
    torch.set_num_threads(1)  # (the DataLoader does this too; the decoder must never compete with the model)


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` if it is a whole number >= 1, else one clear error."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be at least 1, got {batch_size}")
    return batch_size


def default_workers(n_items: int) -> int:
    """Decoding workers for ``n_items`` images: 0 (decode in process, no start-up cost) for fewer than two,
    else ``min(usable CPUs, n_items, MAX_DEFAULT_WORKERS)``."""
    from cotviz.resources import usable_cpus

    if n_items < 2:
        return 0
    return max(0, min(usable_cpus(), n_items, MAX_DEFAULT_WORKERS))


def check_workers(workers: int, option: str = "--workers") -> int:
    """``workers`` if it is a whole number between 0 and 4 x the usable CPUs, else one clear error."""
    from cotviz.resources import usable_cpus

    limit = 4 * usable_cpus()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= limit:
        raise InvalidArgumentError(f"{option} must be between 0 and {limit} (4 x the CPUs this process may use), "
                                   f"got {workers}")
    return workers


def load_batches(items: Iterable[ImageInput], cfg: PreprocessConfig, *, point: tuple[int, int] | None = None,
                 batch_size: int = 8, workers: int = 0, prefetch: int = 2,
                 context: str | None = None) -> Generator[list[Prepared | Failure], None, None]:
    """Decode and preprocess ``items``, yielding them ``batch_size`` at a time, in input order.

    Args:
        items: paths, PIL images, arrays or tensors (see :func:`cotviz.explain.inputs.prepare`). With ``workers=0``
            any iterable, read lazily; with workers it is listed first (a list of paths is small).
        cfg: the model's preprocessing. point: (x, y) in original pixels, checked against every image.
        batch_size: items per yielded list (the last one may be shorter).
        workers: decoding processes; 0 = in this process.
        prefetch: batches each worker decodes ahead (memory: at most ``workers * prefetch`` batches in flight).
        context: the multiprocessing start method of the workers (``"fork"``, ``"forkserver"``, ``"spawn"``);
            None = :func:`worker_context` (a forkserver that has imported cotviz once).

    Returns:
        a generator (validation happens now, decoding as it is iterated; ``close()`` stops the workers) of lists of :class:`Prepared` or :class:`Failure` (``Failure.index``: the position among ``items``).
    """
    check_batch_size(batch_size)
    check_workers(workers, "workers")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise InvalidArgumentError(f"prefetch must be at least 1, got {prefetch}")
    if workers == 0:
        return _in_process(iter(items), cfg, point, batch_size)
    seq = items if isinstance(items, Sequence) and not isinstance(items, (str, bytes)) else list(items)
    if not seq:
        return _in_process(iter(()), cfg, point, batch_size)
    return _in_workers(seq, cfg, point, batch_size, min(workers, len(seq)), prefetch, context)


def _in_process(items: Iterator[ImageInput], cfg: PreprocessConfig, point: tuple[int, int] | None,
                batch_size: int) -> Generator[list[Prepared | Failure], None, None]:
    start = 0
    while chunk := list(islice(items, batch_size)):
        yield [_prepare_one(start + j, item, cfg, point) for j, item in enumerate(chunk)]
        start += len(chunk)


def _in_workers(items: Sequence[ImageInput], cfg: PreprocessConfig, point: tuple[int, int] | None, batch_size: int,
                workers: int, prefetch: int, context: str | None) -> Generator[list[Prepared | Failure], None, None]:
    loader = DataLoader(_WorkerDataset(ImageDataset(items, cfg, point)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_as_list, worker_init_fn=_init_worker,
                        prefetch_factor=prefetch, persistent_workers=False,
                        multiprocessing_context=context or worker_context())
    it = iter(loader)
    try:
        for batch in it:
            for _, caught in batch:
                for message, category, filename, lineno in caught:
                    warnings.warn_explicit(message, category, filename, lineno)
            yield [result for result, _ in batch]
    finally:
        # Stop and join the workers now (also on close(), an error or Ctrl-C), not when the iterator is collected.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it

