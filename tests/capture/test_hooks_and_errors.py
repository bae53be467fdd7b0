"""No hooks outlive the with block (also on errors); exceptions propagate; errors say what to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from cotviz.capture import RecordNotFoundError, capture
from cotviz.errors import CaptureError, CotvizError
from cotviz.layers import CotLayer
from cotviz.models import create_model

from .conftest import leftover_hooks

MakeTiny = Callable[[str], nn.Module]


class Boom(Exception):
    """Injected failure."""


def _raise(*args: Any) -> None:
    raise Boom("injected in layer3")


@pytest.mark.parametrize("kind", ["cotnet", "cotnext", "se_cotnetd"])
def test_hooks_removed_after_success(make_tiny: MakeTiny, image: Tensor, kind: str) -> None:
    model = make_tiny(kind)
    with capture(model) as cap:
        assert leftover_hooks(model)
        model(image)
    assert len(cap) == 5 and leftover_hooks(model) == []


def test_hooks_removed_when_a_hook_raises_in_layer3(make_tiny: MakeTiny, image: Tensor) -> None:
    model = make_tiny("cotnet")
    handle = model.layer3[0].conv3.register_forward_hook(_raise)
    try:
        with pytest.raises(Boom, match="injected in layer3"):
            with capture(model) as cap:
                model(image)
    finally:
        handle.remove()
    assert leftover_hooks(model) == []
    assert list(cap) == ["stage1.block1", "stage2.block1"]  # blocks that finished before the failure


def test_hooks_removed_on_wrong_input(make_tiny: MakeTiny) -> None:
    model = make_tiny("cotnet")
    with pytest.raises(RuntimeError, match="channels"):
        with capture(model, stages=[1, 3]):
            model(torch.randn(1, 4, 32, 32))
    assert leftover_hooks(model) == []


def test_hooks_removed_when_callback_or_body_raises(make_tiny: MakeTiny, image: Tensor) -> None:
    model = make_tiny("cotnet")
    with pytest.raises(Boom):
        with capture(model, on_record=_raise):
            model(image)
    assert leftover_hooks(model) == []
    # an exception of the with body passes through unchanged (even a KeyError: nothing is swallowed)
    with pytest.raises(KeyError, match="mine"):
        with capture(model, stages=[4]):
            model(image)
            raise KeyError("mine")
    assert leftover_hooks(model) == []


def test_backward_through_kept_graph_leaves_no_hooks(make_tiny: MakeTiny, image: Tensor) -> None:
    model = make_tiny("cotnet").train()
    with capture(model, stages=[3], keep_graph=True) as cap:
        logits = model(image)
    loss = logits.sum() + sum(r.output.sum() for r in cap.values())
    loss.backward()
    assert leftover_hooks(model) == []
    assert all(p.grad is not None for p in model.layer3[0].conv2.parameters())
    assert model.training


# --- error messages ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cotnet50() -> nn.Module:
    return create_model("cotnet50")


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(stages=[5]), "stage 5 out of range: cotnet50 has stages 1..4"),
    (dict(stages=0), "stage 0 out of range: cotnet50 has stages 1..4"),
    (dict(stages=[3], blocks=[7]), "block 7 out of range: stage 3 of cotnet50 has blocks 1..6"),
    (dict(blocks=[4]), "block 4 out of range: stage 1 of cotnet50 has blocks 1..3"),
    (dict(blocks=[0]), "block 0 out of range: stage 1 of cotnet50 has blocks 1..3"),
    (dict(stages=["3"]), "stages must be integers, got '3'"),
    (dict(taps=["attn"]), "unknown tap 'attn'; valid taps: static_context, attention, dynamic_context, "
                          "fusion_weights, output"),
    (dict(taps="static"), "unknown tap 'static'"),
    (dict(dtype=torch.int8), "dtype must be a floating torch.dtype"),
])
def test_selection_errors(cotnet50: nn.Module, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CaptureError) as info:
        capture(cotnet50, **kwargs)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value) and isinstance(info.value, CotvizError)
    assert leftover_hooks(cotnet50) == []


def test_model_without_cot_layers(make_tiny: MakeTiny, image: Tensor) -> None:
    model = make_tiny("resnet")
    with pytest.raises(CaptureError, match=r"^resnet50 has no CoT layers \(its blocks use ConvBnAct\)"):
        capture(model)
    with pytest.raises(CaptureError, match="attention"):
        capture(model, taps=["attention", "output"])
    with pytest.raises(CaptureError, match="nothing to capture"):
        capture(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_stage_selection_on_a_bare_layer() -> None:
    with pytest.raises(CaptureError, match="CotLayer has no stages"):
        capture(CotLayer(16), stages=[1])


def test_missing_record_is_a_key_error(make_tiny: MakeTiny, image: Tensor) -> None:
    model = make_tiny("cotnet")
    with capture(model, stages=[3]) as cap:
        model(image)
    with pytest.raises(RecordNotFoundError, match=r"no record 'stage2.block1'; captured: stage3.block1, stage3.block2"):
        cap["stage2.block1"]
    assert "stage2.block1" not in cap and cap.get("stage2.block1") is None
    with pytest.raises(KeyError):
        cap["x"]


class SkipsAttentionTap(CotLayer):
    """A CoT layer whose forward bypasses its ``attention`` tap (an operator wired up wrongly)."""

    def forward(self, x: Tensor) -> Tensor:
        tap = self._modules["attention"]
        self._modules["attention"] = nn.Identity()
        try:
            return super().forward(x)
        finally:
            self._modules["attention"] = tap


def test_requested_tap_that_never_fired() -> None:
    layer = SkipsAttentionTap(16).eval()
    x = torch.randn(1, 16, 5, 5)
    with pytest.raises(CaptureError, match=r"^requested tap attention of layer \(SkipsAttentionTap\) never fired"):
        with capture(layer):
            layer(x)
    assert leftover_hooks(layer) == []
    with capture(layer, taps=["static_context", "output"]) as cap:  # not requested: fine
        layer(x)
    assert cap["layer"].taps == ("static_context", "output")


def test_reentering_an_active_capture(make_tiny: MakeTiny) -> None:
    model = make_tiny("cotnet")
    cap = capture(model, stages=[1])
    with cap:
        with pytest.raises(CaptureError, match="already active"):
            cap.__enter__()
    assert leftover_hooks(model) == []
