"""The notebook API in one script: explain one image (maps, a point, Grad-CAM), save its figure, explain a folder.

    python examples/explain_api.py                      # examples/coffee.png, the untrained demo cotnet50, 96 px
    python examples/explain_api.py photo.jpg --point 400,300 --weights cotnet50.pth.tar --size 224 --out figs/

Without --weights the network is cotviz's untrained demo network (it says so in a warning, the figure and the
JSON): the numbers show the mechanics, not what a trained CoTNet learned. The small default --size keeps the
run to a few seconds on a CPU; the official input is 224.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import cotviz

HERE = Path(__file__).resolve().parent


def to_original(ex: cotviz.Explanation, u: float, v: float) -> tuple[float, float]:
    """Model-input coordinates (u, v) -> pixels of the original image, through the crop box."""
    assert ex.crop_box is not None and ex.image is not None
    left, top, right, bottom = ex.crop_box
    size = ex.image.shape[0]  # S
    return left + u * (right - left) / size, top + v * (bottom - top) / size


def main() -> None:
    p = argparse.ArgumentParser(description="cotviz.explain in a script.")
    p.add_argument("image", nargs="?", type=Path, default=HERE / "coffee.png")
    p.add_argument("--point", default="290,140", help="X,Y in pixels of the original image")
    p.add_argument("--model", default="cotnet50")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--size", type=int, default=96, help="model input side (official: 224)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: a new temporary one)")
    args = p.parse_args()

    # A name builds the network like `cotviz attention` does (checkpoint, or the untrained demo network); a
    # network you built (cotviz.create_model(name, weights=...)) is used as it is, and is built only once.
    model = args.model if args.weights is None else cotviz.create_model(args.model, weights=args.weights)
    request = dict(stage=3, preprocess={"size": args.size})

    ex = cotviz.explain(model, args.image, point=args.point, gradcam=True, **request)
    block = list(ex.maps)[-1]  # the last CoT block of the stage, e.g. "stage3.block6"
    entropy = ex.maps[block]["attention_entropy"]  # (H, W) float32, nats
    print(f"{ex.source}: top-5 classes {list(ex.prediction.classes)}, "
          f"p = {ex.prediction.probabilities[0]:.4f}")
    print(f"{block}: attention entropy {entropy.shape[0]}x{entropy.shape[1]} cells of "
          f"{ex.geometry[block].feature_stride} px, {entropy.min():.3f} .. {entropy.max():.3f} nats "
          f"(uniform 3x3 window: ln 9 = {np.log(9):.3f})")

    row, col = ex.point.cells[block]
    kernel = ex.kernels[block][0]  # (3, 3) raw attention of head 0 at the point's cell
    print(f"point {ex.point.xy}: cell ({row}, {col}) of {block}; head 0 kernel row-major "
          f"{np.array2string(kernel.ravel(), precision=2, separator=', ')}")
    roll = ex.rollout
    i, j = np.unravel_index(np.argmax(roll.values), roll.values.shape)
    x, y = to_original(ex, (j + 0.5) * roll.stride, (i + 0.5) * roll.stride)
    print(f"rollout from {roll.from_block}: mass kept {roll.values.sum():.3f}, peak at stage-input cell "
          f"({i}, {j}) = original pixel ({x:.0f}, {y:.0f})")
    cam = ex.gradcam.upsampled  # (S, S) on the model input
    v, u = np.unravel_index(np.argmax(cam), cam.shape)
    x, y = to_original(ex, u + 0.5, v + 0.5)
    print(f"Grad-CAM of class {ex.gradcam.target} at layer3: peak at original pixel ({x:.0f}, {y:.0f})")

    out = args.out or Path(tempfile.mkdtemp(prefix="cotviz-example-"))
    files = ex.save(out)  # figure + .npz + .json, as `cotviz attention` writes them
    print(f"saved {files.figure.name}, {files.npz.name}, {files.json.name} in {out}")

    # Many images: paths, folders and glob patterns; a file that cannot be read comes back with .error
    inputs = [HERE, str(HERE / "gallery" / "*.png"), HERE / "missing.jpg"]
    for item in cotviz.explain_many(model, inputs, batch_size=4, **request):
        if item.error is not None:
            print(f"  {item.source}: error: {item.error}")
        else:
            mean = item.statistics()[f"{block}/attention_entropy"]["mean"]
            print(f"  {Path(item.source).name}: class {item.prediction.top}, mean entropy {mean:.3f} nats")


if __name__ == "__main__":
    main()
