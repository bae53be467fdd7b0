"""Every operator of the spatial-layer registry: forward/backward, exact parameter counts, taps, exact values.

Registry-parametrized (timm ``test_models.py`` style) on one layer at C=16, exact values on small cases
against from-scratch float64 formulas (``sa``) and against the CoT layer whose parts the Table 5
ablations reuse (``static``, ``dynamic``, ``linear``, ``concat``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _helpers import randomize_norms
from torch import Tensor, nn

from cotviz.layers import CotLayer, Tap, create_spatial_layer, list_spatial_layers, parse_layer_spec
from cotviz.layers.ablations import CotConcat, CotDynamic, CotLinear, CotStatic
from cotviz.layers.self_attention import LocalSelfAttention
from cotviz.models import CoTResNet, create_model

C = 16  # channels of the one-layer cases
OPERATORS = list_spatial_layers()

#: Taps each operator exposes, in firing order (a plain conv / split attention has none).
TAPS: dict[str, tuple[str, ...]] = {
    "cot": ("static_context", "attention", "dynamic_context", "fusion_weights", "output"),
    "static": ("static_context", "output"),
    "dynamic": ("static_context", "attention", "dynamic_context", "output"),
    "linear": ("static_context", "attention", "dynamic_context", "output"),
    "concat": ("static_context", "attention", "dynamic_context", "output"),
    "sa": ("attention", "output"),
    "conv": (),
    "split_attn": (),
}


@contextmanager
def tap_recorder(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """``{tap path: clone of its output}`` in firing order; hooks removed on exit."""
    fired: dict[str, Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, args, out, p=path: fired.__setitem__(p, out.detach().clone()))
               for path, m in model.named_modules() if isinstance(m, Tap)]
    try:
        yield fired
    finally:
        for h in handles:
            h.remove()


def test_every_registered_operator_is_covered() -> None:
    assert set(OPERATORS) == set(TAPS)


# --------------------------------------------------------------------------------------------------
# Registry-parametrized: forward, backward, taps
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cardinality", [1, 2])
@pytest.mark.parametrize("name", OPERATORS)
def test_forward_backward_every_parameter_gets_a_gradient(name: str, cardinality: int) -> None:
    torch.manual_seed(0)
    layer = create_spatial_layer(name, C, cardinality=cardinality).train()
    x = torch.randn(2, C, 6, 5, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, C, 6, 5)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in layer.named_parameters():
        assert p.grad is not None, f"{name}: {pname} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"
    with torch.no_grad():
        assert torch.isfinite(layer.eval()(x)).all()


@pytest.mark.parametrize("cardinality", [1, 2])
@pytest.mark.parametrize("name", OPERATORS)
def test_channels_last_input_gives_the_same_output(name: str, cardinality: int) -> None:
    layer = create_spatial_layer(name, C, cardinality=cardinality).eval()
    x = torch.randn(2, C, 5, 6)
    with torch.no_grad():
        expected = layer(x)
        got = layer(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", OPERATORS)
def test_taps_present_fire_in_order_and_add_no_keys(name: str) -> None:
    layer = create_spatial_layer(name, C).eval()
    assert [n for n, m in layer.named_children() if isinstance(m, Tap)] == list(TAPS[name])
    assert not [k for k in layer.state_dict() if k.split(".")[0] in TAPS[name]]
    x = torch.randn(2, C, 5, 5)
    with torch.no_grad(), tap_recorder(layer) as fired:
        out = layer(x)
    assert list(fired) == list(TAPS[name])
    if "output" in fired:
        assert torch.equal(fired["output"], out)
    if "attention" in fired:
        k2 = layer.kernel_size**2  # type: ignore[operator]
        assert fired["attention"].shape == (2, 1, C // 8, k2, 5, 5)  # CoT's layout, C/8 maps


def test_ablations_have_no_fusion_and_sa_is_not_a_cot_layer() -> None:
    for name in ("static", "dynamic", "linear", "concat"):
        layer = create_spatial_layer(name, C)
        assert isinstance(layer, CotLayer) and not hasattr(layer, "se") and not hasattr(layer, "fusion_weights")
    assert not isinstance(create_spatial_layer("sa", C), CotLayer)


# --------------------------------------------------------------------------------------------------
# Exact parameter counts, one layer at C = 16 (k = 3, share_planes 8, CoT constants: key groups 4,
# embed 2C -> C/2 -> k²C/8, se bottleneck max(2C/4, 32) = 32)
# --------------------------------------------------------------------------------------------------

_K = 9  # k² for k = 3
_KEY_EMBED = C * (C // 4) * _K + 2 * C  # grouped kxk conv (groups 4, no bias) + BN
_EMBED = 2 * C * (C // 2) + 2 * (C // 2) + (C // 2) * (_K * C // 8) + _K * C // 8 + 2 * (_K * C // 8)
#        1x1 2C->C/2 (no bias), BN(C/2), 1x1 C/2 -> k²C/8 with bias, GroupNorm(k²C/8) affine
_VALUE = C * C + 2 * C  # conv1x1: 1x1 (no bias) + BN
_BN = 2 * C  # bn after the aggregation
_SE = (C * 32 + 32) + 2 * 32 + (32 * 2 * C + 2 * C)  # 1x1 C->32 with bias, BN(32), 1x1 32->2C with bias

PARAMS: dict[str, int] = {
    "cot": _KEY_EMBED + _EMBED + _VALUE + _BN + _SE,
    "static": _KEY_EMBED,
    "dynamic": _KEY_EMBED + _EMBED + _VALUE + _BN,
    "linear": _KEY_EMBED + _EMBED + _VALUE + _BN,
    "concat": _KEY_EMBED + _EMBED + _VALUE + _BN + (2 * C * C + 2 * C),  # fuse: 1x1 2C->C (no bias) + BN
    "sa": 3 * C * C + _K * 8 + 2 * C,  # q, k, v 1x1 (no bias), rel_pos (k², C/heads = 8), BN
    "conv": C * C * _K + 2 * C,  # 3x3 (no bias) + BN
    "split_attn": C * C * _K + 2 * C + (C * 32 + 32) + 2 * 32 + (32 * C + C),  # conv, bn0, fc1, bn1, fc2
}


@pytest.mark.parametrize("name", OPERATORS)
def test_exact_parameter_count(name: str) -> None:
    layer = create_spatial_layer(name, C)
    assert sum(p.numel() for p in layer.parameters()) == PARAMS[name]


def test_hand_counts_are_the_numbers() -> None:
    """The formulas above, evaluated (so a wrong formula cannot hide behind an equally wrong layer)."""
    assert PARAMS == {"cot": 3062, "static": 608, "dynamic": 1398, "linear": 1398, "concat": 1942, "sa": 872,
                      "conv": 2336, "split_attn": 3472}


@pytest.mark.parametrize(("spec", "params"), [
    ("sa:kernel=7", 3 * C * C + 49 * 8 + 2 * C),  # rel_pos (49, 8)
    ("sa:share_planes=4", 3 * C * C + _K * 4 + 2 * C),  # 4 heads of 4 channels: rel_pos (9, 4)
    ("static:kernel=5", C * (C // 4) * 25 + 2 * C),
    ("linear:key_kernel=1", PARAMS["linear"] - C * (C // 4) * (_K - 1)),  # 1x1 static-context conv
])
def test_exact_parameter_count_with_options(spec: str, params: int) -> None:
    layer = parse_layer_spec(spec).build(C)
    assert sum(p.numel() for p in layer.parameters()) == params


# --------------------------------------------------------------------------------------------------
# sa: exact values and a real distribution
# --------------------------------------------------------------------------------------------------


def _sa_reference(layer: LocalSelfAttention, x: Tensor) -> tuple[Tensor, Tensor]:
    """(attention (B, 1, heads, k², H, W), output) from the definition, with unfold (float64)."""
    b, c, h, w = x.shape
    k, nh, d = layer.kernel_size, layer.heads, layer.share_planes
    q = F.conv2d(x, layer.query.weight)
    key = F.conv2d(x, layer.key.weight)
    v = F.conv2d(x, layer.value.weight)
    keys = F.unfold(key, k, padding=k // 2).view(b, d, nh, k * k, h, w)  # channel c = i*heads + head
    vals = F.unfold(v, k, padding=k // 2).view(b, d, nh, k * k, h, w)
    qh = q.view(b, d, nh, 1, h, w)
    logits = (qh * keys).sum(1) + (layer.rel_pos.t().reshape(1, d, 1, k * k, 1, 1) * qh).sum(1)
    a = logits.softmax(dim=2)  # (B, heads, k², H, W)
    y = (vals * a.unsqueeze(1)).sum(3).reshape(b, c, h, w)  # channel i*heads + head uses head's map
    bn = layer.bn
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return a.unsqueeze(1), F.relu(y)


@pytest.mark.parametrize("kernel", [3, 5])
def test_sa_equals_its_definition(kernel: int) -> None:
    gen = torch.Generator().manual_seed(4)
    layer = randomize_norms(LocalSelfAttention(C, kernel).double(), gen).eval()
    x = torch.randn(2, C, 5, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad(), tap_recorder(layer) as fired:
        out = layer(x)
        attn, expected = _sa_reference(layer, x)
    torch.testing.assert_close(fired["attention"], attn, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


def test_sa_softmax_sums_to_one_over_the_window() -> None:
    layer = create_spatial_layer("sa", C, kernel=7).eval()
    with torch.no_grad(), tap_recorder(layer) as fired:
        layer(10 * torch.randn(2, C, 6, 6))  # border windows (7x7 on 6x6) include padded positions
    a = fired["attention"]  # (B, 1, heads, 49, H, W)
    assert a.shape == (2, 1, 2, 49, 6, 6)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(dim=3), torch.ones(2, 1, 2, 6, 6), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# Table 5 ablations: the CoT layer's parts, recombined
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cot_run() -> dict[str, Any]:
    """A CoT layer at C=16 with randomised norms (float64, eval), its taps on one input."""
    gen = torch.Generator().manual_seed(6)
    cot = randomize_norms(CotLayer(C).double(), gen).eval()
    x = torch.randn(2, C, 6, 5, generator=gen, dtype=torch.float64)
    with torch.no_grad(), tap_recorder(cot) as fired:
        cot(x)
    return {"layer": cot, "x": x, "taps": fired, "gen": gen}


@pytest.mark.parametrize("cls", [CotStatic, CotDynamic, CotLinear, CotConcat])
def test_ablation_keys_are_the_cot_layers(cls: type[CotLayer], cot_run: dict[str, Any]) -> None:
    cot_layout = {k: v.shape for k, v in cot_run["layer"].state_dict().items()}
    layout = {k: v.shape for k, v in cls(C).state_dict().items()}
    kept = {k: v for k, v in layout.items() if not k.startswith("fuse.")}
    assert all(cot_layout[k] == shape for k, shape in kept.items())
    removed = {k.split(".")[0] for k in set(cot_layout) - set(kept)}
    assert removed == ({"embed", "conv1x1", "bn", "se"} if cls is CotStatic else {"se"})
    if cls is CotConcat:
        assert {k: list(v) for k, v in layout.items() if k.startswith("fuse.")} == {
            "fuse.0.weight": [C, 2 * C, 1, 1], "fuse.1.weight": [C], "fuse.1.bias": [C], "fuse.1.running_mean": [C],
            "fuse.1.running_var": [C], "fuse.1.num_batches_tracked": []}


@pytest.mark.parametrize("name", ["static", "dynamic", "linear", "concat"])
def test_ablation_outputs_from_the_cot_layers_parts(name: str, cot_run: dict[str, Any]) -> None:
    """Loaded with the CoT layer's weights, each ablation reproduces its contexts and combines them as Table 5."""
    cot, x, taps = cot_run["layer"], cot_run["x"], cot_run["taps"]
    layer = create_spatial_layer(name, C).double()
    sd = {k: v for k, v in cot.state_dict().items() if k in layer.state_dict()}
    if name == "concat":
        randomize_norms(layer.fuse, cot_run["gen"])
        sd |= {f"fuse.{k}": v for k, v in layer.fuse.state_dict().items()}
    layer.load_state_dict(sd, strict=True)
    layer.eval()
    with torch.no_grad(), tap_recorder(layer) as fired:
        out = layer(x)
    k1, k2 = taps["static_context"], taps["dynamic_context"]
    torch.testing.assert_close(fired["static_context"], k1, atol=1e-12, rtol=0)
    if name != "static":
        torch.testing.assert_close(fired["attention"], taps["attention"], atol=1e-12, rtol=0)
        torch.testing.assert_close(fired["dynamic_context"], k2, atol=1e-12, rtol=0)
    if name == "concat":
        conv, bn = layer.fuse[0], layer.fuse[1]
        cat = torch.cat([k1, k2], dim=1)  # (B, 2C, H, W): [K1, K2]
        expected = F.batch_norm(F.conv2d(cat, conv.weight), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                False, 0.0, bn.eps)
    else:
        expected = {"static": k1, "dynamic": k2, "linear": k1 + k2}[name]
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# In the skeleton
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in OPERATORS if n != "split_attn"])
def test_meta_build_initialises_every_operator_like_a_direct_build(name: str) -> None:
    """create_model builds on meta and initialises once: every parameter (sa's rel_pos too) must get its value
    from init_weights, exactly as a direct CPU build re-initialised with the same seed."""
    kwargs = dict(layers=[1, 1, 1, 1], base_width=16, num_classes=10, spatial_layer=f"{name}@3-4")
    fast = create_model("cotnet50", seed=5, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        direct = CoTResNet(**kwargs)
        torch.manual_seed(5)
        direct.init_weights()
    a, b = fast.state_dict(), direct.state_dict()
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert isinstance(fast, CoTResNet) and fast.describe()["layer4"] == [name]


@pytest.mark.parametrize("name", ["sa", "static", "concat"])
def test_operator_network_forward(name: str) -> None:
    model = create_model("cotnet50", layers=[1, 1, 1, 1], base_width=16, num_classes=10, spatial_layer=name)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
