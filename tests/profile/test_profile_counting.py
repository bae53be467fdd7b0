"""The counting pass itself: fast meta shapes == PyTorch's meta kernels, memory liveness, meta copies."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from cotviz.models.meta import build_meta_model
from cotviz.profile import count_model, estimate_forward_memory, profile_model
from cotviz.profile.counting import CountResult

#: Small members of every model family: CoT (avg-pool before the operator), CoXt (stack), SE-CoTNetD-152
#: (deep stem, split attention, avg-pool shortcut, BlurPool): together every op the zoo runs.
TINY: dict[str, dict[str, Any]] = {
    "cotnet50": {"layers": [1, 1, 1, 1], "base_width": 16, "num_classes": 10},
    "cotnext50_2x48d": {"layers": [1, 1, 1, 1], "num_classes": 10},
    "se_cotnetd_152": {"layers": [1, 1, 2, 1], "num_classes": 10},
}


def _signature(r: CountResult) -> tuple[Any, ...]:
    return (r.ops, r.official, r.allocations, r.peak_bytes, r.peak_module, r.output_bytes, r.params)


@pytest.mark.parametrize("name", sorted(TINY))
def test_fast_meta_shapes_equal_pytorch_meta_kernels(name: str) -> None:
    model = build_meta_model(name, **TINY[name])
    fast = count_model(model, (2, 3, 72, 72), fast=True)  # 72: odd maps (9x9 -> 5x5 -> 3x3) test ceil modes
    slow = count_model(model, (2, 3, 72, 72), fast=False)
    assert fast.ops and _signature(fast) == _signature(slow)


class _Chain(nn.Module):
    """conv (cin->2) -> ReLU (out of place) -> conv (2->1), no biases, float32."""

    def __init__(self, cin: int = 1) -> None:
        super().__init__()
        self.a = nn.Conv2d(cin, 2, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.b = nn.Conv2d(2, 1, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.act(self.a(x)))


def test_activation_memory_liveness_by_hand() -> None:
    with torch.device("meta"):
        m = _Chain()
    r = count_model(m, (1, 1, 4, 4))
    # input 16 floats = 64 B; a: (1, 2, 4, 4) = 128 B; act: 128 B; b: 64 B
    assert r.input_bytes == 64 and r.output_bytes == 64
    assert r.allocations == [("a", 128), ("act", 128), ("b", 64)]  # every op output (the input is not one)
    # a's output is still referenced while act runs: 64 + 128 + 128; it dies before b allocates
    assert r.peak_bytes == 64 + 128 + 128 == 320 and r.peak_module == "act"


def test_inplace_relu_allocates_nothing() -> None:
    with torch.device("meta"):
        m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(inplace=True))
    r = count_model(m, (1, 1, 4, 4))
    assert r.allocations == [("0", 128)]
    assert r.peak_bytes == 64 + 128


def test_batch_scales_macs_and_memory_linearly() -> None:
    model = build_meta_model("cotnext50_2x48d", **TINY["cotnext50_2x48d"])
    one, three = count_model(model, (1, 3, 64, 64)), count_model(model, (3, 3, 64, 64))
    assert sum(o.macs for o in three.ops) == 3 * sum(o.macs for o in one.ops)
    assert sum(c.macs for c in three.official) == 3 * sum(c.macs for c in one.official)
    assert sum(b for _, b in three.allocations) > 2.9 * sum(b for _, b in one.allocations)


def test_half_precision_halves_activation_bytes() -> None:
    f32 = count_model(build_meta_model("cotnet50", **TINY["cotnet50"]), (1, 3, 64, 64))
    f16 = count_model(build_meta_model("cotnet50", dtype=torch.float16, **TINY["cotnet50"]), (1, 3, 64, 64))
    assert f16.buffer_bytes < f32.buffer_bytes
    assert f16.dtype == torch.float16
    assert f16.input_bytes * 2 == f32.input_bytes and f16.output_bytes * 2 == f32.output_bytes
    assert [o.macs for o in f16.ops] == [o.macs for o in f32.ops]


def test_forward_memory_estimate_by_hand() -> None:
    model = _Chain(cin=3)
    # (1, 3, 32, 32) input 12288 B; a's and act's outputs (1, 2, 32, 32) 8192 B each live together: peak
    # 28672 B; weights (2*3*9 + 1*2*9) floats = 288 B; no buffers
    assert estimate_forward_memory(model, 32) == 12288 + 8192 + 8192 + 288
    assert estimate_forward_memory(model, 32, batch=2) == 2 * (12288 + 8192 + 8192) + 288
    assert model.a.weight.device.type == "cpu"  # counted on a meta copy


def test_forward_memory_estimate_is_the_reports_figure() -> None:
    r = profile_model("cotnet50", size=64, batch=2, dtype="bfloat16")
    m = r.memory
    assert m.forward_bytes == m.activations_peak_bytes + 2 * r.params + m.buffers_bytes
    assert estimate_forward_memory("cotnet50", 64, 2, dtype="bfloat16") == m.forward_bytes
