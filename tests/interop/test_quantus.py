"""Quantus' model parameter randomisation test (MPRT) with cotviz's signed Grad-CAM as explain_func."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cotviz.errors import InvalidArgumentError
from cotviz.interop import quantus_grad_cam

from .conftest import need, tiny


def test_mprt_with_signed_grad_cam() -> None:
    quantus = need("quantus")
    model = tiny()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)).numpy()
    y = np.array([1, 4])
    signed = quantus_grad_cam(model, x, y, stage=4, absolute=False)
    assert signed.shape == (2, 1, 32, 32) and signed.dtype == np.float32 and signed.min() < 0 < signed.max()
    np.testing.assert_array_equal(quantus_grad_cam(model, x, y, stage=4), np.abs(signed))
    mprt = quantus.MPRT(skip_layers=True, return_last_correlation=True, disable_warnings=True,
                        display_progressbar=False)
    scores = mprt(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=quantus_grad_cam,
                  explain_func_kwargs={"stage": 4}, device="cpu")
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    with pytest.raises(InvalidArgumentError, match="takes stage, relu, absolute and device"):
        quantus_grad_cam(model, x, y, smooth=True)
