"""Shared CLI test scaffolding: a CliRunner and a fresh-interpreter runner."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def fresh_python() -> Callable[[str], None]:
    """Run code in a fresh interpreter (clean ``sys.modules`` and GC state); fail with its stderr."""

    def run(code: str) -> None:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]

    return run
