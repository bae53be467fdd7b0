"""Train a demo model on :class:`~cotviz.data.ShapesDataset`: ``python -m cotviz.data.train --model cotnet_demo``.

Seeded and reproducible (same arguments, same machine: same weights; one thread by default, so the
result does not depend on the thread count): the model's init from ``create_model(seed=...)``, the training
images from ``ShapesDataset(seed=--seed)`` seen once each in index order (fresh samples, no epochs), the
held-out split from ``--eval-seed``. AdamW + OneCycle, label smoothing. Logs images/s, loss and held-out
accuracy as it goes; writes a float16 checkpoint (``{"state_dict", "arch", "epoch", "metric", "meta"}``:
``meta`` holds the held-out accuracy, the training command, the curve and the sha256 of the weights) that
``create_model(NAME, weights=PATH)`` loads through the safe loader.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cotviz.data.shapes import ShapesDataset
from cotviz.models import create_model
from cotviz.models.untrained import pretrained_cfg_of
from cotviz.resources import torch_threads

__all__ = ["evaluate", "main", "state_dict_sha256", "train"]


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the keys, dtypes, shapes and bytes of every tensor, in order (independent of the file format)."""
    h = hashlib.sha256()
    for key, t in state_dict.items():
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def evaluate(model: nn.Module, data: ShapesDataset, *, batch_size: int = 100) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``data``."""
    model.eval()
    correct = 0
    for images, labels, _ in DataLoader(data, batch_size=batch_size):
        correct += int((model(images).argmax(1) == labels).sum())
    return correct / max(len(data), 1)


def train(model_name: str, *, samples: int, batch_size: int, lr: float, weight_decay: float, smoothing: float,
          seed: int, eval_seed: int, eval_samples: int, eval_every: int, workers: int,
          log: Any = print) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``model_name`` on ``samples`` fresh images; returns the model (eval mode) and the curve
    (one dict per evaluation: step, images, seconds, train_loss, train_acc, heldout_acc)."""
    model = create_model(model_name, seed=seed)
    size = pretrained_cfg_of(model).image_size
    train_data = ShapesDataset(samples, seed=seed, size=size)
    held_out = ShapesDataset(eval_samples, seed=eval_seed, size=size)
    steps = math.ceil(samples / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loader = DataLoader(train_data, batch_size=batch_size, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    curve: list[dict[str, float]] = []
    start = time.perf_counter()
    seen, loss_sum, acc_sum, n_sum = 0, 0.0, 0, 0
    torch.manual_seed(seed)
    model.train()
    for step, (images, labels, _) in enumerate(loader, start=1):
        logits = model(images)  # (B, classes)
        loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += len(labels)
        loss_sum += float(loss.detach()) * len(labels)
        acc_sum += int((logits.argmax(1) == labels).sum())
        n_sum += len(labels)
        if step % eval_every == 0 or step == steps:
            elapsed = time.perf_counter() - start
            acc = evaluate(model, held_out)
            model.train()
            point = {"step": step, "images": seen, "seconds": round(elapsed, 1),
                     "train_loss": round(loss_sum / n_sum, 4), "train_acc": round(acc_sum / n_sum, 4),
                     "heldout_acc": round(acc, 4)}
            curve.append(point)
            log(f"step {step}/{steps} images {seen} {seen / elapsed:.1f} img/s loss {point['train_loss']:.4f} "
                f"train_acc {point['train_acc']:.4f} heldout_acc {acc:.4f} ({elapsed:.0f} s)")
            loss_sum, acc_sum, n_sum = 0.0, 0, 0
    return model.eval(), curve


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cotviz.data.train", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cotnet_demo")
    p.add_argument("--samples", type=int, default=32000, help="training images (each seen once)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="init and training split")
    p.add_argument("--eval-seed", type=int, default=1, help="held-out split")
    p.add_argument("--eval-samples", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=100, help="steps between held-out evaluations")
    p.add_argument("--final-samples", type=int, default=2000, help="held-out images of the final figure")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes generating images")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pth)")
    args = p.parse_args(argv)
    command = "python -m cotviz.data.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:]))
    with torch_threads(args.threads):
        t0 = time.perf_counter()
        model, curve = train(args.model, samples=args.samples, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, smoothing=args.smoothing, seed=args.seed,
                             eval_seed=args.eval_seed, eval_samples=args.eval_samples, eval_every=args.eval_every,
                             workers=args.workers, log=lambda s: print(s, flush=True))
        train_seconds = time.perf_counter() - t0
        final = ShapesDataset(args.final_samples, seed=args.eval_seed, size=pretrained_cfg_of(model).image_size)
        acc32 = evaluate(model, final)
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
        model16 = create_model(args.model, seed=args.seed)
        model16.load_state_dict(half)  # cast back to float32 by copy: what loading the shipped file gives
        acc16 = evaluate(model16, final)
    meta = {"model": args.model, "heldout_acc": acc16, "heldout_acc_float32": acc32,
            "heldout": f"ShapesDataset({args.final_samples}, seed={args.eval_seed}, size={final.size})",
            "train": f"ShapesDataset({args.samples}, seed={args.seed}, size={final.size})", "train_seconds": round(train_seconds, 1),
            "images_per_second": round(args.samples / max(train_seconds, 1e-9), 1), "command": command,
            "torch": str(torch.__version__), "weights_sha256": state_dict_sha256(half), "curve": json.dumps(curve)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": half, "arch": args.model, "epoch": 1, "metric": acc16, "meta": meta}, args.out)
    print(json.dumps({k: v for k, v in meta.items() if k != "curve"}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
