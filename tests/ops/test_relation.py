"""Local relation: fast path == unfold reference, an exact hand-made case, gradients of every order, errors.

``R[b, head, j, h, w] = sum_{c % heads == head} Q[b, c, h, w] * Kpad[b, c, h + kh - K//2, w + kw - K//2]``,
``j = kh*K + kw`` (see ``cotviz/ops/relation.py``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from cotviz.errors import CotvizError
from cotviz.ops import local_aggregation
from cotviz.ops.relation import RelationShapeError, local_relation, local_relation_reference


def _pair(b: int, c: int, h: int, w: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)  # (B, C, H, W)
    k = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype)


def test_hand_made_case() -> None:
    """One head of 2 channels on a 2x3 image, K = 3: every window entry by hand.

    Q is 1 at channel 0 and 2 at channel 1 everywhere; K[0] = [[1, 2, 3], [4, 5, 6]], K[1] = 10 * K[0].
    So R[j, h, w] = 1 * K0[h+dh, w+dw] + 2 * 10 * K0[h+dh, w+dw] = 21 * K0pad[h+dh, w+dw].
    """
    q = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).expand(1, 2, 2, 3).contiguous()
    k0 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    k = torch.stack([k0, 10 * k0])[None]  # (1, 2, 2, 3)
    r = local_relation(q, k, 3, heads=1)
    assert r.shape == (1, 1, 9, 2, 3)
    padded = torch.nn.functional.pad(k0, (1, 1, 1, 1))  # (4, 5)
    for kh in range(3):
        for kw in range(3):
            expected = 21 * padded[kh:kh + 2, kw:kw + 3]  # key at (h + kh - 1, w + kw - 1)
            torch.testing.assert_close(r[0, 0, kh * 3 + kw], expected, atol=0, rtol=0)
    # centre tap at (0, 0) = 21 * K0[0, 0]; top-left tap at (0, 0) falls in the padding
    assert r[0, 0, 4, 0, 0] == 21 and r[0, 0, 0, 0, 0] == 0


def test_heads_take_interleaved_channels() -> None:
    """Channel c belongs to head c % heads: with 4 channels and 2 heads, head 0 = channels {0, 2}."""
    q, k = _pair(1, 4, 3, 3, seed=3)
    r = local_relation(q, k, 1, heads=2)  # K = 1: a plain per-pixel dot product
    torch.testing.assert_close(r[:, 0, 0], (q[:, 0] * k[:, 0] + q[:, 2] * k[:, 2]), atol=1e-12, rtol=0)
    torch.testing.assert_close(r[:, 1, 0], (q[:, 1] * k[:, 1] + q[:, 3] * k[:, 3]), atol=1e-12, rtol=0)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 2), heads=st.integers(1, 4), per_head=st.integers(1, 3), h=st.integers(1, 9),
       w=st.integers(1, 9), kernel=st.sampled_from([1, 3, 5, 7]), channels_last=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fast_path_equals_reference(b: int, heads: int, per_head: int, h: int, w: int, kernel: int,
                                    channels_last: bool, seed: int) -> None:
    q, k = _pair(b, heads * per_head, h, w, seed)
    expected = local_relation_reference(q, k, kernel, heads)
    if channels_last:
        q, k = (t.contiguous(memory_format=torch.channels_last) for t in (q, k))
    got = local_relation(q, k, kernel, heads)
    assert got.shape == (b, heads, kernel * kernel, h, w)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision_against_float64(dtype: torch.dtype) -> None:
    q, k = _pair(2, 16, 7, 6, seed=5)
    expected = local_relation_reference(q, k, 3, 2)
    got = local_relation(q.to(dtype), k.to(dtype), 3, 2)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 0.1  # bfloat16 inputs: 8 mantissa bits, float32 accumulation
    torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize(("kernel", "heads", "channels"), [(3, 2, 6), (5, 1, 2), (1, 3, 6)])
def test_gradcheck(kernel: int, heads: int, channels: int) -> None:
    q, k = _pair(1, channels, 3, 3, seed=7)  # small: one backward per output element
    q.requires_grad_()
    k.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: local_relation(a, b, kernel, heads), (q, k))


def test_gradgradcheck() -> None:
    """Second order (the backward is made of the aggregation's registered operators, themselves differentiable)."""
    q, k = _pair(1, 4, 3, 3, seed=8)
    q.requires_grad_()
    k.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: local_relation(a, b, 3, 2), (q, k))


def test_gradients_are_the_aggregation_adjoints() -> None:
    """<R(Q, K), G> = <Q, agg(K, G)>: the query gradient is the local aggregation of the keys by G."""
    q, k = _pair(2, 8, 5, 5, seed=9)
    q.requires_grad_()
    g = torch.randn(2, 4, 9, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (grad_q,) = torch.autograd.grad(local_relation(q, k, 3, 4), q, g)
    torch.testing.assert_close(grad_q, local_aggregation(k, g.unsqueeze(1), 3), atol=1e-12, rtol=0)


def test_meta_tensors_give_the_shape() -> None:
    q = torch.empty(8, 64, 56, 56, device="meta")
    r = local_relation(q, q, 7, 8)
    assert r.is_meta and r.shape == (8, 8, 49, 56, 56)


@pytest.mark.parametrize(("q_shape", "k_shape", "kernel", "heads", "dtype", "message"), [
    ((1, 4, 3, 3), (1, 4, 3, 3), 2, 1, torch.float32, r"odd kernel_size >= 1 .*got 2"),
    ((1, 4, 3, 3), (1, 4, 3, 3), 3, 3, torch.float32, r"heads=3 must divide the 4 channels"),
    ((1, 4, 3, 3), (1, 4, 3, 4), 3, 1, torch.float32, r"one 4-D shape .*\(1, 4, 3, 3\) and \(1, 4, 3, 4\)"),
    ((4, 3, 3), (4, 3, 3), 3, 1, torch.float32, r"one 4-D shape"),
    ((1, 4, 3, 3), (1, 4, 3, 3), 3, 1, torch.int64, r"one floating dtype"),
])
def test_errors_are_one_line(q_shape: tuple[int, ...], k_shape: tuple[int, ...], kernel: int, heads: int,
                             dtype: torch.dtype, message: str) -> None:
    q, k = torch.zeros(q_shape, dtype=dtype), torch.zeros(k_shape, dtype=dtype)
    with pytest.raises(RelationShapeError, match=message) as info:
        local_relation(q, k, kernel, heads)
    assert isinstance(info.value, CotvizError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
