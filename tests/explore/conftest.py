"""Fixtures for the explorer tests: two tiny networks explained with every cell kept, their pages, one browser.

* ``net``: cotnet50's layout with two blocks in stage 3 (the first average-pools before its CoT layer), 16 base
  channels: stage 3 at 96 px is 6 x 6 cells of 16 px, 8 heads, the stage input 12 x 12 cells of 8 px.
* ``blur_net``: se_cotnetd_152's layout (BlurPool after a strided CoT layer) with two blocks in stage 2: the
  blocks have different grids (16 x 16 at stride 4, then 8 x 8 at stride 8).

The browser is Debian's Chromium driven by Playwright (``launch(executable_path=...)``, never
``playwright install``); without either, the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import randomize_norms
from torch import nn

from cotviz.analysis.catalog import MAP_INFO
from cotviz.explain import Explanation, explain
from cotviz.models import create_model

REPO = Path(__file__).resolve().parents[2]
COFFEE = REPO / "examples" / "coffee.png"
SIZE = 96
EVERY_MAP = list(MAP_INFO)
CHROMIUM = os.environ.get("COTVIZ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def net() -> nn.Module:
    return randomize_norms(create_model("cotnet50", seed=0, layers=[1, 1, 2, 1], base_width=16, num_classes=10), 1)


@pytest.fixture(scope="session")
def blur_net() -> nn.Module:
    return randomize_norms(create_model("se_cotnetd_152", seed=0, layers=[1, 2, 1, 1], base_width=16,
                                        num_classes=10), 2)


@pytest.fixture(scope="session")
def explained(net: nn.Module) -> Explanation:
    """Stage 3 of ``net`` on the coffee photo, every map, every cell kept."""
    return explain(net, COFFEE, stage=3, maps=EVERY_MAP, cells=True, preprocess={"size": SIZE})


@pytest.fixture(scope="session")
def blur_explained(blur_net: nn.Module) -> Explanation:
    return explain(blur_net, COFFEE, stage=2, maps=["attention_entropy", "static_energy"], cells=True,
                          preprocess={"size": 64})


@pytest.fixture(scope="session")
def page_files(explained: Explanation, blur_explained: Explanation,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pages")
    return {"tiny": explained.explore().save(d / "tiny.html"), "blur": blur_explained.explore().save(d / "blur.html")}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for a test module (skipped, with the reason, without Chromium or Playwright)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; the browser comes from apt: "
                    "apt-get install chromium, never `playwright install`)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y --no-install-recommends chromium; "
                    "or set COTVIZ_CHROMIUM to its path)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()
