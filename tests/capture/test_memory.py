"""Memory of a full capture of cotnet50 at 224 (batch 1): every tap of all 16 CoT layers < 200 MB."""

from __future__ import annotations

import torch

from cotviz.capture import TAP_NAMES, capture
from cotviz.models import create_model

MB = 1024 * 1024


def test_all_taps_of_cotnet50_at_224_fit_in_200_mb() -> None:
    model = create_model("cotnet50")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), capture(model) as cap:
        model(x)
    assert len(cap) == 16 and all(r.has_cot and r.taps == TAP_NAMES for r in cap.values())
    tensors = [t for r in cap.values() for t in (*(getattr(r, n) for n in TAP_NAMES), r.block_output)]
    total = sum(t.numel() * t.element_size() for t in tensors)
    assert total == cap.nbytes
    assert total < 200 * MB, f"{total / MB:.1f} MB"
    # stored copies own their memory (no views into the network's buffers)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == len(tensors)
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in tensors)
    # geometry at 224: stage 3 is 14x14 at stride 16
    rec = cap["stage3.block1"]
    assert (rec.feature_size, rec.feature_stride, rec.input_size) == ((14, 14), 16, (224, 224))
    assert rec.attention.shape == (1, 1, 32, 9, 14, 14)
