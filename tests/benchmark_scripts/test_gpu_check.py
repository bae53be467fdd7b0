"""benchmarks/gpu_check.py on a machine without a GPU: its options, the one-line refusal of ``--device cuda``,
and its aggregation section (the fast operator against the unfold reference) on the CPU at tiny shapes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_options(gpu_check: ModuleType) -> None:
    full = gpu_check.parse_args([])
    assert full.device == "cuda" and full.batches == (1, 8, 64) and full.size == 224 and full.compile
    assert full.sections == ("models", "aggregation", "attention")
    quick = gpu_check.parse_args(["--device", "cpu", "--quick", "--no-compile", "--only", "aggregation"])
    assert (quick.batches, quick.size, quick.images, quick.compile) == ((1, 2), 64, 4, False)
    assert quick.sections == ("aggregation",)
    assert gpu_check.parse_args(["--batches", "2,4"]).batches == (2, 4)
    for bad in (["--batches", "8,x"], ["--batches", "0"], ["--size", "16"], ["--only", "nothing"]):
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.parse_args(bad)
        assert exit_info.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda would run")
def test_cuda_without_a_gpu_is_one_line_and_exit_2(gpu_check: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--device", "cuda", "--quick"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: --device cuda: CUDA is not available here") and "--device cpu" in err
    assert gpu_check.main(["--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_aggregation_section_runs_on_the_cpu_and_agrees_with_the_reference(
        gpu_check: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    s = gpu_check.parse_args(["--device", "cpu", "--size", "32", "--batches", "1", "--rounds", "1", "--repeats", "1"])
    rows = gpu_check.aggregation_section(s, gpu_check.select_device("cpu"))
    assert [r[0] for r in rows] == ["stage 1", "stage 2", "stage 3", "stage 4"]
    assert rows[0][1] == "1x64x8x8" and rows[3][1] == "1x512x2x2"
    assert all(r[-1] < 1e-4 for r in rows)  # the fast operator computes what the reference does
    gpu_check.print_table("aggregation", ("stage", "shape", "a", "b", "c", "d", "e", "f", "diff"), rows)
    assert "stage 4" in capsys.readouterr().out
