"""Capture the CoT internals of stage 3 of CoTNet-50 and print per-block statistics.

    python examples/capture_api.py                        # examples/coffee.png, random-init weights
    python examples/capture_api.py photo.jpg --weights cotnet50.pth.tar

With random weights (fixed seed) the numbers show the mechanics, not what a trained network learned.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cotviz.analysis.stats import summarize_record
from cotviz.capture import capture
from cotviz.models import create_model

HERE = Path(__file__).resolve().parent
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics of the official pretrained_cfg
STD = (0.229, 0.224, 0.225)


def load_image(path: Path, size: int = 224) -> torch.Tensor:
    """RGB image -> (1, 3, size, size), plain resize (no crop), ImageNet-normalised."""
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x[None]  # (1, 3, H, W)


def main() -> None:
    p = argparse.ArgumentParser(description="Per-block CoT statistics of stage 3.")
    p.add_argument("image", nargs="?", type=Path, default=HERE / "coffee.png")
    p.add_argument("--model", default="cotnet50")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--stage", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)

    model = create_model(args.model, weights=args.weights)  # eval mode, seed 0 when no weights
    x = load_image(args.image)
    with torch.no_grad(), capture(model, stages=[args.stage]) as cap:
        logits = model(x)

    print(f"{args.model} ({'random init, seed 0' if args.weights is None else args.weights.name}), "
          f"{args.image.name} at {tuple(x.shape[-2:])}, top class {int(logits.argmax())}")
    cols = [("attention_energy", "|A|"), ("softmax_entropy", "H(sm A)"), ("center_share", "centre"),
            ("static_energy", "K1 rms"), ("dynamic_energy", "K2 rms"), ("output_energy", "Y rms"),
            ("dynamic_fraction", "K2 frac"), ("dynamic_weight", "K2 wt")]
    print(f"{'block':<15}{'operator':<11}{'map':>7}{'stride':>7}" + "".join(f"{h:>9}" for _, h in cols))
    for rec in cap.values():
        s = summarize_record(rec)
        h, w = rec.feature_size or (0, 0)
        cells = "".join(f"{s[k]:>9.3f}" if k in s else f"{'-':>9}" for k, _ in cols)
        print(f"{rec.name:<15}{rec.layer_type:<11}{f'{h}x{w}':>7}{rec.feature_stride:>7}{cells}")
    print("|A|: L2 of the raw attention over the 3x3 window; H(sm A): entropy (nats, max ln 9 = 2.197) of "
          "softmax(A) over the window; centre: softmax(A) at the centre; K1/K2/Y rms: RMS over channels of "
          "static context, dynamic context, fused output; K2 frac / K2 wt: fraction of channels whose fusion "
          "weight favours K2, and its mean weight.")


if __name__ == "__main__":
    main()
