"""Data-parallel runs on ``torch.distributed``: the process group from torchrun's environment, and the collectives
that merge accumulators.

``torchrun --nproc_per_node N -m cotviz stats ...`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` / ``MASTER_PORT`` (or a rendezvous endpoint across nodes); :func:`process_group` initialises the
default group from them (``gloo`` on CPU, ``nccl`` on CUDA) only when ``WORLD_SIZE > 1`` and no group exists yet,
and destroys only a group it created. A caller that already initialised a group (a notebook under torchrun) keeps
it.

Merging (:func:`reduce_accumulator`): counts and histograms ``all_reduce(SUM)`` (int64: exact), minimum and
maximum ``all_reduce(MIN / MAX)``, and the moments ``all_gather`` of every rank's dyadic-block partials (at most
``2 log2(batches) + 2`` per rank, padded to that many), re-pushed in rank order into one
:class:`~cotviz.stats.accumulators.MomentTree`: the same merge tree as one process, so the same bits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from cotviz.errors import InvalidArgumentError
from cotviz.stats.accumulators import Accumulator, Moments, MomentTree

__all__ = ["World", "broadcast_tensor", "gather_bytes", "max_float", "process_group", "reduce_accumulator", "sum_int",
           "world_from_env"]


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size``, ``local_rank`` on its node (what picks its GPU)."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") \
            from None


def world_from_env() -> World:
    """``World`` from an initialised default group, else from torchrun's variables (one process without them)."""
    if dist.is_available() and dist.is_initialized():
        size, rank = dist.get_world_size(), dist.get_rank()
    else:
        size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank if size > 1 else 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    if size < 1 or not 0 <= rank < size:
        raise InvalidArgumentError(f"RANK={rank} does not fit WORLD_SIZE={size}")
    return World(rank, size, local, max(1, local_size))


@contextmanager
def process_group(device: torch.device, timeout_s: float = 1800.0) -> Iterator[World]:
    """The default process group for the run (created from the environment when needed, see the module)."""
    world = world_from_env()
    created = False
    if world.distributed and not dist.is_initialized():
        if not dist.is_available():
            raise InvalidArgumentError("WORLD_SIZE > 1 but this torch has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        created = True
    try:
        yield world
    finally:
        if created:
            dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_tensor(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``t`` of rank ``src`` on every rank (a copy; ``t`` itself is not modified)."""
    dev = _comm_device()
    buf = t.detach().clone().to(dev)
    dist.broadcast(buf, src)
    return buf.cpu()


def gather_bytes(data: bytes) -> list[bytes]:
    """Every rank's ``data``, in rank order, on every rank (lengths first, then padded uint8 tensors; no pickle)."""
    dev = _comm_device()
    n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = max(int(s.item()) for s in sizes)
    buf = torch.zeros(max(longest, 1), dtype=torch.uint8, device=dev)
    buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else buf[:0]
    parts = [torch.zeros_like(buf) for _ in sizes]
    dist.all_gather(parts, buf)
    return [bytes(p[: int(s.item())].cpu().numpy().tobytes()) for p, s in zip(parts, sizes, strict=True)]


def sum_int(value: int) -> int:
    """The sum of ``value`` over the ranks."""
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item())


def max_float(value: float) -> float:
    """The largest ``value`` over the ranks."""
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def reduce_accumulator(acc: Accumulator, total_batches: int) -> Accumulator:
    """The accumulator of all ranks' runs, on every rank (ranks hold consecutive runs, in rank order)."""
    dev = _comm_device()
    out = Accumulator(acc.lo.clone(), acc.hi.clone(), acc.bins)
    for name, op in (("count", dist.ReduceOp.SUM), ("nonfinite", dist.ReduceOp.SUM), ("hist", dist.ReduceOp.SUM),
                     ("minimum", dist.ReduceOp.MIN), ("maximum", dist.ReduceOp.MAX)):
        t = getattr(acc, name).clone().to(dev)
        dist.all_reduce(t, op=op)
        setattr(out, name, t.cpu())
    cap = 2 * max(1, math.ceil(math.log2(total_batches + 1))) + 2
    blocks, mom = acc.tree.to_arrays()
    if blocks.shape[0] > cap:
        raise InvalidArgumentError(f"{blocks.shape[0]} moment blocks exceed the bound {cap}")
    s = acc.size
    packed = torch.zeros(cap, 2 + 3 * s, dtype=torch.float64)  # row: start, size (0 = padding), n | mean | M2
    for i in range(blocks.shape[0]):
        packed[i, 0], packed[i, 1] = float(blocks[i, 0]), float(blocks[i, 1])
        packed[i, 2:] = torch.from_numpy(np.ascontiguousarray(mom[i])).reshape(-1)
    parts = [torch.zeros_like(packed, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, packed.to(dev))
    tree = MomentTree(s)
    for part in parts:
        p = part.cpu()
        for row in p:
            size = int(row[1].item())
            if size:
                tree.push(int(row[0].item()), size, Moments.unstack(row[2:].reshape(3, s)))
    out.tree = tree
    return out
