"""python -m cotviz.data.train: seeded and reproducible, a checkpoint the safe loader reads back."""

from __future__ import annotations

import torch

from cotviz import create_model
from cotviz.data.train import main, state_dict_sha256, train
from cotviz.models.checkpoint import read_checkpoint
from cotviz.resources import torch_threads


def _run(seed: int) -> dict[str, torch.Tensor]:
    with torch_threads(1):
        model, curve = train("cotnet_demo", samples=8, batch_size=4, lr=1e-3, weight_decay=0.05, smoothing=0.1,
                             seed=seed, eval_seed=1, eval_samples=4, eval_every=1, workers=0, log=lambda s: None)
    assert [p["step"] for p in curve] == [1, 2] and curve[-1]["images"] == 8
    return model.state_dict()


def test_same_seed_same_weights() -> None:
    a, b, c = _run(0), _run(0), _run(1)
    assert state_dict_sha256(a) == state_dict_sha256(b) != state_dict_sha256(c)
    assert not torch.equal(a["fc.weight"], create_model("cotnet_demo").fc.weight)  # it trained


def test_main_writes_a_loadable_float16_checkpoint(tmp_path) -> None:
    out = tmp_path / "demo.pth"
    assert main(["--samples", "8", "--batch-size", "8", "--eval-samples", "4", "--final-samples", "4",
                 "--workers", "0", "--out", str(out)]) == 0
    sd, info = read_checkpoint(out)
    assert info.arch == "cotnet_demo" and {t.dtype for t in sd.values() if t.is_floating_point()} == {torch.float16}
    raw = torch.load(out, weights_only=True)
    assert raw["meta"]["command"] == f"python -m cotviz.data.train --samples 8 --batch-size 8 --eval-samples 4 " \
                                     f"--final-samples 4 --workers 0 --out {out}"
    assert raw["meta"]["weights_sha256"] == state_dict_sha256(raw["state_dict"])
    create_model("cotnet_demo", weights=out)  # strict, safe load
