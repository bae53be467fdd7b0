"""``create_model`` overrides are checked against their valid ranges, and its ``weights=`` path (issue 11 #9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cotviz.errors import CheckpointError, InvalidArgumentError
from cotviz.models.registry import create_model

TINY: dict[str, Any] = {"layers": [1, 1, 1, 1], "base_width": 16, "num_classes": 10}


def _meta(name: str = "cotnet50", **overrides: Any) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **{**TINY, **overrides})


@pytest.mark.parametrize(("override", "message"), [
    (dict(base_width=0), "base_width must be an integer from 1 to 4096, got 0"),  # was ZeroDivisionError
    (dict(base_width=16.0), "base_width must be an integer from 1 to 4096, got 16.0"),
    (dict(num_classes=-1), "num_classes must be an integer from 0 to 1000000 (0: no classifier"),  # was Identity
    (dict(num_classes=2.5), "num_classes must be an integer from 0 to 1000000"),
    (dict(num_classes=True), "num_classes must be an integer from 0 to 1000000"),
    (dict(cardinality=0), "cardinality must be an integer from 1 to 256, got 0"),
    (dict(layers=[1, 1, 1, 0]), "layers must be 4 integer block counts from 1 to 128 (one per stage)"),
    (dict(layers=[1.5, 1, 1, 1]), "layers must be 4 integer block counts from 1 to 128"),  # was truncated to 1
    (dict(layers=[1, 1, 1]), "layers must be 4 integer block counts"),
    (dict(layers=[1, 1, 1, 500]), "layers must be 4 integer block counts from 1 to 128"),
    (dict(stem_width=0), "stem_width must be an integer from 1 to 4096, got 0"),
    (dict(in_chans=0), "in_chans must be an integer from 1 to 1024, got 0"),
    (dict(drop_rate=2.0), "drop_rate must be a number in [0, 1), got 2.0"),
    (dict(drop_path_rate=-0.1), "drop_path_rate must be a number in [0, 1), got -0.1"),
    (dict(stem_pool="false"), "stem_pool must be True or False, got 'false'"),  # was truthy: a max-pool
    (dict(avg_down=1), "avg_down must be True or False, got 1"),
    (dict(zero_init_last_bn=None), "zero_init_last_bn must be True or False, got None"),
    (dict(act_layer=5), "act_layer must be an activation name (relu, silu, gelu) or an nn.Module class, got 5"),
    (dict(spatial_act_layer=nn.Linear(2, 2)), "spatial_act_layer must be an activation name"),
    (dict(stem_type="deep_tiered", stem_width=2), "stem_width must be at least 4 with stem_type='deep_tiered'"),
])
def test_override_outside_its_range_names_the_range(override: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        _meta(**override)
    text = str(err.value)
    assert text.startswith("cotnet50: ") and message in text and "\n" not in text, text


def test_valid_edges_build() -> None:
    features = _meta(num_classes=0)  # timm's convention: no classifier, pooled features
    assert isinstance(features.fc, nn.Identity)
    assert _meta(layers=(1, 2, 1, 1), base_width=8, cardinality=2, drop_rate=0.0, drop_path_rate=0.5,
                 stem_pool=False, in_chans=1).conv1.weight.shape[1] == 1


def test_widths_the_layers_cannot_split_give_one_line() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        _meta("se_cotnetd_50", base_width=3)
    assert "\n" not in str(err.value) and "3" in str(err.value)


def test_weights_too_large_for_memory_are_refused_before_allocating() -> None:
    """Run in a child under a 4 GiB address-space limit: a regression fails with MemoryError there instead
    of filling this machine's memory (base_width=4096 asks for ~123 GiB of weights)."""
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            "from cotviz.errors import ResourceLimitError\n"
            "from cotviz.models.registry import create_model\n"
            "try:\n    create_model('cotnet50', base_width=4096, num_classes=10)\n"
            "except ResourceLimitError as err:\n    print('refused:', err)\n")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    out = proc.stdout.strip()
    assert proc.returncode == 0 and out.startswith("refused: cotnet50"), (out, proc.stderr[-500:])
    assert "of memory, but only" in out and len(out.splitlines()) == 1


def test_seed_and_weights_types_are_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="seed must be an integer or None"):
        create_model("cotnet50", seed="0", **TINY)
    with pytest.raises(InvalidArgumentError, match="weights must be a path"):
        create_model("cotnet50", weights=123, **TINY)  # type: ignore[arg-type]


def test_weights_with_nonfinite_values_need_allow_nonfinite(tmp_path: Path) -> None:
    trained = create_model("cotnet50", **TINY)
    sd = trained.state_dict()
    sd["fc.bias"][3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"holds 1 non-finite values \(NaN/Inf\) in 1 tensors \(e.g. fc.bias\)"):
        create_model("cotnet50", weights=path, **TINY)
    model = create_model("cotnet50", weights=path, allow_nonfinite=True, **TINY)
    assert torch.isnan(model.fc.bias[3]) and torch.equal(model.conv1.weight, trained.conv1.weight)
