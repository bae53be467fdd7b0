"""Shared test fixtures: the reference data folder, thread count and seeding.

``reference_dir`` is ``<repo>/../shared/reference`` (the ground truth generated from the official
JDAI-CV/CoTNet code, see its README.md); tests that need it are skipped with a clear reason when the
folder is absent. Torch runs on at most 2 threads (the project's CI budget).
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (must be set before torch loads its OpenMP runtime).
# With the default spin policy, 2 intra-op threads on a 2-core machine shared with other processes
# (load average ~6) ran the small-model forward/backward loop of tests/models/test_zoo.py in 70 s
# instead of 9 s (1 thread: 3-4 s). Not measured on an idle machine. Set OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# 2 threads in every test process, pytest-xdist workers included: tests compare bits with child processes that
# run on 2 threads (a float reduction's order depends on the thread count; 1 thread per worker broke
# tests/stats/test_distributed.py's resume-to-the-same-bits check).
torch.set_num_threads(2)

REPO_ROOT: Path = Path(__file__).resolve().parents[1]
REFERENCE_DIR: Path = REPO_ROOT / ".." / "shared" / "reference"
DEFAULT_SEED: int = 0


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``<repo>/../shared/reference``; skips the test when the folder is absent."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference data folder {REFERENCE_DIR.resolve()} is absent "
                    "(it holds the goldens generated from the official CoTNet code)")
    return REFERENCE_DIR.resolve()


@pytest.fixture(scope="session")
def manifest(reference_dir: Path) -> dict[str, Any]:
    """``state_dict_manifest.json``: ``{variant: {params, keys, cot_layers, default_cfg, ...}}``."""
    with open(reference_dir / "state_dict_manifest.json", encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


@pytest.fixture(scope="session")
def load_reference(reference_dir: Path) -> Callable[[str], dict[str, Any]]:
    """``load_reference("tiny_cotnet_golden.pt")``: a reference file, read once per session (do not mutate it)."""
    cache: dict[str, dict[str, Any]] = {}

    def load(name: str) -> dict[str, Any]:
        if name not in cache:
            cache[name] = torch.load(reference_dir / name, weights_only=True)
        return cache[name]

    return load


@pytest.fixture(scope="session")
def meta_model() -> Callable[[str], torch.nn.Module]:
    """``meta_model("se_cotnetd_270")``: the full-size registered model on the meta device (``build_meta_model``,
    no overrides), built once per session: shapes only, read-only use (several packages walk every variant)."""
    from cotviz.models.meta import build_meta_model

    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            cache[name] = build_meta_model(name)
        return cache[name]

    return get


@pytest.fixture
def seeded() -> Iterator[int]:
    """Seed torch's global RNG with :data:`DEFAULT_SEED` for one test; the previous RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEFAULT_SEED)
        yield DEFAULT_SEED
