"""Fixtures for the stats tests (helpers in ``_stats_data``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _stats_data import make_tree, tiny_model
from torch import nn


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return tiny_model()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "data")
