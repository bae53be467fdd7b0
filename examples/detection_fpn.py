"""A cotviz network as a torchvision detection backbone: FPN over its stages, Faster R-CNN on top.

    python examples/detection_fpn.py                      # the shipped demo CoTNet, one synthetic image
    python examples/detection_fpn.py --model cotnet50 --weights cotnet50.pth.tar --size 224

Builds ``cotviz.backbone_with_fpn(model)`` (torchvision's ``BackboneWithFPN`` over ``layer2..layer4``, channels
from ``feature_info``), puts a ``FasterRCNN`` on it, runs one training step on a shape of
``cotviz.data.ShapesDataset`` (its box from the pixel mask) and one inference. The detection head starts
untrained, so the boxes found show the plumbing, not a detector. Needs torchvision built for your torch
(README "Using cotviz with timm / torchvision / grad-cam / captum").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import cotviz
import cotviz.interop
from cotviz.data import ShapesDataset


def main() -> None:
    p = argparse.ArgumentParser(description="Faster R-CNN on an FPN over a cotviz network.")
    p.add_argument("--model", default="cotnet_demo")
    p.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the demo weights of cotnet_demo)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    args = p.parse_args()

    weights = args.weights if args.weights is not None else ("demo" if args.model == "cotnet_demo" else None)
    model = cotviz.create_model(args.model, weights=weights)
    try:  # imports torchvision: one line if it is missing or not built for this torch
        backbone = cotviz.backbone_with_fpn(model, returned_layers=(2, 3, 4), out_channels=64, trainable_layers=3)
    except cotviz.interop.MissingDependencyError as err:
        raise SystemExit(f"error: {err}") from None
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    detector = FasterRCNN(backbone, num_classes=2, min_size=args.size, max_size=args.size,
                          image_mean=list(model.pretrained_cfg["mean"]), image_std=list(model.pretrained_cfg["std"]),
                          rpn_anchor_generator=anchors, box_detections_per_img=5,
                          # one small image: a few hundred anchors, so fewer proposals and sampled RoIs than for COCO
                          rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
                          rpn_post_nms_top_n_test=20, box_batch_size_per_image=64)

    sample = ShapesDataset(1, seed=0, size=args.size).sample(0)  # image (H, W, 3) uint8, mask (H, W) bool
    image = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255.0  # (3, H, W) in [0, 1]
    ys, xs = torch.from_numpy(sample.mask).nonzero(as_tuple=True)
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)  # (1, 4) x0 y0 x1 y1

    with torch.no_grad():
        maps = backbone(image[None])
    print("FPN maps:", ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in maps.items()))

    detector.train()
    backbone.body.eval()  # the backbone's BatchNorms keep their statistics (detection practice; a batch of one here)
    trainable = [q for q in detector.parameters() if q.requires_grad]
    losses = detector([image], [{"boxes": box, "labels": torch.tensor([1])}])
    sum(losses.values()).backward()  # type: ignore[union-attr]
    torch.optim.SGD(trainable, lr=0.01).step()
    print("one training step:", ", ".join(f"{k} {float(v.detach()):.3f}" for k, v in losses.items()))

    detector.eval()
    with torch.no_grad():
        (found,) = detector([image])
    print(f"shape box {box[0].tolist()}; {len(found['boxes'])} detections, top scores "
          f"{[round(float(s), 3) for s in found['scores'][:3]]}")


if __name__ == "__main__":
    main()
