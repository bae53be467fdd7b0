"""Local attention rollout on hand-made kernels, and the adjoint identity against the real operators."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cotviz.analysis.rollout import (
    KernelStep,
    PoolStep,
    cell_at,
    local_rollout,
    normalize_mass,
    plan_stage,
    stage_input_geometry,
    stage_rollout,
    to_input_pixels,
    window_weights,
)
from cotviz.layers.blur import BlurPool2d
from cotviz.ops.aggregation import local_aggregation_reference

K = 3


def one_position(h: int, w: int, kh: int, kw: int, heads: int = 1, value: float = 1.0) -> torch.Tensor:
    """Attention (heads, K*K, H, W) that puts ``value`` on window position (kh, kw) at every cell."""
    a = torch.zeros(heads, K * K, h, w, dtype=torch.float64)
    a[:, kh * K + kw] = value
    return a


def test_right_neighbour_kernel_moves_mass_right() -> None:
    # window position (kh=1, kw=2) is the cell to the right: output p reads input p + (0, 1)
    step = KernelStep(one_position(5, 5, 1, 2), K)
    m = local_rollout([step], (2, 2))
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[2, 3] = 1.0
    torch.testing.assert_close(m, expected)


def test_two_blocks_compose_and_mass_falls_off_the_border() -> None:
    steps = [KernelStep(one_position(5, 5, 1, 2), K), KernelStep(one_position(5, 5, 2, 1), K)]  # right, then down
    m = local_rollout(steps, (1, 1))
    # block 2 (down) reads (2, 1); block 1 (right) reads (2, 2)
    assert m[2, 2] == 1.0 and m.sum() == 1.0
    gone = local_rollout(steps, (4, 1))  # "down" from the last row reads zero padding
    assert gone.sum() == 0.0


def test_uniform_kernels_give_a_tent() -> None:
    flat = torch.ones(1, K * K, 7, 7, dtype=torch.float64)
    m = local_rollout([KernelStep(flat, K), KernelStep(flat, K)], (3, 3))
    tent = torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0], dtype=torch.float64) / 9
    expected = torch.zeros(7, 7, dtype=torch.float64)
    expected[1:6, 1:6] = tent[:, None] * tent[None, :]
    torch.testing.assert_close(m, expected)


def test_signed_weights_abs_and_softmax_and_head_mean() -> None:
    a = torch.zeros(2, K * K, 3, 3, dtype=torch.float64)
    a[0, 5] = -2.0  # head 0: right neighbour, negative
    a[0, 3] = 2.0  # head 0: left neighbour, positive
    a[1, 7] = 5.0  # head 1: the cell below
    w = window_weights(a, "abs")  # (KK, H, W)
    torch.testing.assert_close(w[:, 1, 1], torch.tensor([0, 0, 0, 0.25, 0, 0.25, 0, 0.5, 0], dtype=torch.float64))
    m = local_rollout([KernelStep(a, K)], (1, 1))
    assert m[1, 2] == 0.25 and m[1, 0] == 0.25 and m[2, 1] == 0.5
    ws = window_weights(a, "softmax")
    z0 = 7 + math.exp(2) + math.exp(-2)
    assert ws[3, 0, 0].item() == pytest.approx((math.exp(2) / z0 + 1 / (8 + math.exp(5))) / 2)
    torch.testing.assert_close(ws.sum(0), torch.ones(3, 3, dtype=torch.float64))


def test_avgpool_step_spreads_one_ninth_over_the_input_window() -> None:
    centre = one_position(3, 3, 1, 1)
    steps = [PoolStep("avgpool", (6, 6), (3, 3)), KernelStep(centre, K)]
    m = local_rollout(steps, (1, 1))
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected[1:4, 1:4] = 1 / 9  # input cells 2p-1 .. 2p+1
    torch.testing.assert_close(m, expected)
    corner = local_rollout(steps, (0, 0))
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected[0:2, 0:2] = 1 / 9  # the padded row/column -1 keeps its (zero) share: count_include_pad=True
    torch.testing.assert_close(corner, expected)
    odd = local_rollout([PoolStep("avgpool", (5, 5), (3, 3)), KernelStep(centre, K)], (2, 2))
    assert odd[3:5, 3:5].sum().item() == pytest.approx(4 / 9) and odd.sum().item() == pytest.approx(4 / 9)


@pytest.mark.parametrize("kind", ["avgpool", "blur"])
def test_rollout_is_the_adjoint_of_the_real_forward_operators(kind: str) -> None:
    """<forward(x), e_p> = <x, rollout(p)>, with forward = pool then the real local aggregation op."""
    gen = torch.Generator().manual_seed(0)
    attn = torch.randn(3, K * K, 4, 5, dtype=torch.float64, generator=gen)  # (M, KK, 4, 5)
    in_size = (8, 9) if kind == "avgpool" else (7, 10)
    grid_in = (4, 5) if kind == "avgpool" else (7, 10)
    steps: list = []
    if kind == "avgpool":
        steps = [PoolStep("avgpool", in_size, (4, 5)), KernelStep(attn, K)]
    else:
        attn0 = torch.randn(2, K * K, *grid_in, dtype=torch.float64, generator=gen)
        steps = [KernelStep(attn0, K), PoolStep("blur", grid_in, (4, 5)), KernelStep(attn, K)]

    def forward(x: torch.Tensor) -> torch.Tensor:  # (H_in, W_in) -> (4, 5), built from the real ops
        y = x[None, None]
        for st in steps:
            if isinstance(st, PoolStep):
                y = (F.avg_pool2d(y, 3, 2, padding=1, count_include_pad=True) if st.kind == "avgpool"
                     else BlurPool2d(1).double()(y))
            else:
                w = window_weights(st.attention, "abs")  # (KK, H, W)
                y = local_aggregation_reference(y, w[None, None, None], K, 1, 1, 1)  # (1, 1, H, W)
        return y[0, 0]

    x = torch.randn(*in_size, dtype=torch.float64, generator=gen)
    y = forward(x)
    for cell in [(0, 0), (2, 3), (3, 4)]:
        m = local_rollout(steps, cell)
        assert m.shape == in_size
        assert y[cell].item() == pytest.approx((x * m).sum().item(), rel=1e-10, abs=1e-12)


def test_plan_stage_builds_pool_kernel_and_blur_steps() -> None:
    a = {1: torch.zeros(1, 9, 4, 4), 2: torch.zeros(1, 9, 2, 2)}
    steps = plan_stage(a, kernel_size=3, pooled_before={1: True}, blurred_after={1: True}, stage_input_size=(8, 8))
    kinds = [s.kind if isinstance(s, PoolStep) else "kernel" for s in steps]
    assert kinds == ["avgpool", "kernel", "blur", "kernel"]
    assert steps[0].in_size == (8, 8) and steps[2].out_size == (2, 2)
    with pytest.raises(ValueError, match="blocks 1..n"):
        plan_stage({2: a[2]}, kernel_size=3, pooled_before={}, blurred_after={}, stage_input_size=(2, 2))
    with pytest.raises(ValueError, match="without pooling"):
        plan_stage({1: a[1]}, kernel_size=3, pooled_before={}, blurred_after={}, stage_input_size=(8, 8))
    # the query cell is on the last block's CoT grid: a BlurPool after the last block is not a step
    last = plan_stage({1: a[1]}, kernel_size=3, pooled_before={1: True}, blurred_after={1: True},
                      stage_input_size=(8, 8))
    assert [s.kind if isinstance(s, PoolStep) else "kernel" for s in last] == ["avgpool", "kernel"]


def test_point_on_a_block_that_blur_pools_after_itself() -> None:
    """SE-CoTNetD's first stage-2 block blur-pools after its CoT layer; its rollout ends at its own window."""
    import cotviz
    from cotviz.models import create_model

    net = create_model("se_cotnetd_152", seed=0, layers=[1, 2, 1, 1], base_width=16, num_classes=10).eval()
    ex = cotviz.explain(net, torch.rand(3, 64, 64), stage=2, blocks=[1], maps=["attention_energy"], point=(20, 20))
    assert ex.geometry["stage2.block1"].blurred_after and ex.rollout is not None


def test_to_input_pixels_and_cell_at_use_the_tiling_convention() -> None:
    m = torch.zeros(3, 3, dtype=torch.float64)
    m[0, 2] = 1.0
    px = to_input_pixels(m, 4, (12, 12))
    assert px.shape == (12, 12) and px.sum().item() == pytest.approx(1.0)
    assert (px[0:4, 8:12] == 1 / 16).all() and px[4:, :].sum() == 0 and px[:, :8].sum() == 0
    assert to_input_pixels(m, 4, (10, 10)).shape == (10, 10)  # partial last cells are cropped
    assert cell_at(8.0, 3.9, 4, (3, 3)) == (0, 2)
    assert cell_at(11.999, 12.0, 4, (3, 3)) == (2, 2)  # far border clamps into the grid
    torch.testing.assert_close(normalize_mass(m * 4), m)


def test_stage_rollout_on_captured_cotnet_stage() -> None:
    from cotviz.capture import capture
    from cotviz.models import create_model

    model = create_model("cotnet50", layers=[1, 2, 1, 1], base_width=16)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), capture(model, stages=[2], taps=["attention"]) as cap:
        model(x)
    recs = list(cap.values())
    stride, size = stage_input_geometry(recs[0])
    assert recs[0].pooled_before and stride == 4 and size == (16, 16) and recs[0].feature_size == (8, 8)
    m, s = stage_rollout(recs, 0, (3, 4))
    assert s == 4 and m.shape == (16, 16)
    assert 0 < m.sum().item() <= 1.0 + 1e-12
    # support: 2 kernels (radius 2 cells at stride 8) then the pool (radius 1 at stride 4) around cell (3, 4)
    rows, cols = torch.nonzero(m, as_tuple=True)
    assert rows.min() >= 2 * (3 - 2) - 1 and rows.max() <= 2 * (3 + 2) + 1
    assert cols.min() >= 2 * (4 - 2) - 1 and cols.max() <= 2 * (4 + 2) + 1
