"""ONNX export of CoT networks: both exporters give the eager numbers through onnxruntime.

Before the registered operator, the legacy (TorchScript) exporter silently dropped the aggregation's
``torch.mul(..., out=<view>)`` (the op became a constant: logits 0.88 off relative on a live network)
and the dynamo exporter exported a fixed batch only, with 512 ``Slice`` and 192 ``ScatterND`` nodes
for cotnet50. Each export here takes 10-50 s on a shared 2-core machine, so there is one per exporter.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from _helpers import randomize_norms
from torch import Tensor, nn

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[dev]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[dev]')")
pytest.importorskip("onnxscript", reason="onnxscript (the dynamo exporter's backend) is not installed")

TOL = 1e-4
COT_LAYERS = 4  # one CoT/CoXt layer per stage in the tiny networks


@pytest.fixture(autouse=True)
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per torchvision op it cannot register (torchvision is not a dependency)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _run(path: Path, x: Tensor) -> Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _assert_parity(model: nn.Module, path: Path, batches: tuple[int, ...]) -> None:
    for b in batches:  # other batch sizes than the one exported: the batch is dynamic
        x = torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            expected = model(x)
        got = _run(path, x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) <= TOL * max(1.0, float(expected.abs().max())), f"batch {b}"


@pytest.mark.slow  # 10-30 s on a shared 2-core machine: torch.export, decompositions, onnxscript's optimizer
def test_dynamo_exporter_dynamic_batch_compact_graph(live_net: Callable[..., nn.Module], images: Tensor,
                                                    tmp_path: Path) -> None:
    # CoT in stage 4 only: the export's time grows with the layers (every stage's CoT layer: 18 s CPU instead of
    # 9 s), and the aggregation's formulation does not depend on the stage (the stride-2 block of stage 4 included)
    model = live_net("cotnet50", "cot@4")
    path = tmp_path / "cotnet.onnx"
    torch.onnx.export(model, (images,), path, dynamo=True, input_names=["x"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    _assert_parity(model, path, (1, 3))
    ops = Counter(node.op_type for node in onnx.load(path).graph.node)
    # the aggregation: one Pad and 3 row + 9 column Slices per layer, no scatter
    assert ops["ScatterND"] == 0
    assert ops["Slice"] == 12
    # 112 nodes in torch 2.13 / onnxscript 0.7 (333 with a CoT layer in every stage; before the registered
    # operator: 611 nodes, 128 Slice and 48 ScatterND for those 4 layers)
    assert sum(ops.values()) < 150


def test_legacy_exporter_keeps_the_aggregation(live_net: Callable[[str], nn.Module], images: Tensor,
                                               tmp_path: Path) -> None:
    model = live_net("cotnext50_2x48d")  # CoXt layers here, CoT layers in the dynamo test
    path = tmp_path / "cotnext.onnx"
    # grad mode on and parameters requiring grad: this used to fail inside TorchScript (unordered_map::at)
    torch.onnx.export(model, (images,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    _assert_parity(model, path, (1, 3))
    ops = Counter(node.op_type for node in onnx.load(path).graph.node)
    assert ops["ScatterND"] == 0 and ops["Pad"] == COT_LAYERS


def test_exported_program_with_the_operator_lowers_to_onnx(tmp_path: Path) -> None:
    # a program exported by the user first holds torch.ops.cotviz.local_aggregation: the dynamo exporter
    # refuses it as such, and exports it after cotviz.ops.decompositions()
    from cotviz.layers.cot import CotLayer
    from cotviz.ops import decompositions

    layer = randomize_norms(nn.Sequential(CotLayer(32)), seed=2).eval()
    x = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    program = torch.export.export(layer, (x,))
    assert any(n.target is torch.ops.cotviz.local_aggregation.default for n in program.graph.nodes)
    with pytest.raises(Exception, match="cotviz.local_aggregation"):
        torch.onnx.export(program, dynamo=True)
    table = torch.export.default_decompositions()
    table.update(decompositions())
    onnx_program = torch.onnx.export(program.run_decompositions(table), dynamo=True)
    assert onnx_program is not None
    path = tmp_path / "layer.onnx"
    onnx_program.save(path)
    with torch.no_grad():
        torch.testing.assert_close(_run(path, x), layer(x), atol=TOL, rtol=TOL)
