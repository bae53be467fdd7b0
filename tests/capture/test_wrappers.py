"""Capture through wrappers (issue 11, item 11): geometry from the CoT network's own input, every network kept.

Before: ``nn.Sequential(nn.Upsample(scale_factor=2), net)`` recorded ``input_size=(64, 64)`` although the
network saw 128x128, and a module holding two networks recorded only the first, silently.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from cotviz.capture import block_range, capture, cot_blocks, stage_range
from cotviz.errors import CaptureError
from cotviz.layers import CotLayer

from .conftest import leftover_hooks

MakeTiny = Callable[[str], nn.Module]


class Pair(nn.Module):
    """Two networks on the same image, the second at twice the resolution; logits summed."""

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.teacher, self.student = teacher, student
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.teacher(x) + self.student(self.up(x))


def test_upsample_in_front_gives_the_networks_own_input_size(make_tiny: MakeTiny, image: Tensor) -> None:
    net = make_tiny("cotnet")
    wrapped = nn.Sequential(nn.Upsample(scale_factor=2), net)
    with torch.no_grad(), capture(wrapped, taps=["output"]) as cap:
        wrapped(image)  # (2, 3, 64, 64) -> the network sees (2, 3, 128, 128)
    assert list(cap) == ["stage1.block1", "stage2.block1", "stage3.block1", "stage3.block2", "stage4.block1"]
    for rec in cap.values():
        assert rec.input_size == (128, 128)
        assert rec.feature_size is not None and rec.feature_stride is not None
        assert rec.feature_size[0] * rec.feature_stride == 128
    assert cap["stage3.block1"].feature_size == (8, 8) and cap["stage3.block1"].feature_stride == 16
    # the same records as capturing the network on the upsampled input directly
    with torch.no_grad(), capture(net, taps=["output"]) as direct:
        net(nn.functional.interpolate(image, scale_factor=2))
    for name, rec in direct.items():
        assert cap[name].input_size == rec.input_size
        assert torch.equal(cap[name].tensor("output"), rec.tensor("output"))
    assert leftover_hooks(wrapped) == []


def test_two_networks_are_both_recorded_under_their_paths(make_tiny: MakeTiny, image: Tensor) -> None:
    pair = Pair(make_tiny("cotnet"), make_tiny("cotnext"))
    names = [b.name for b in cot_blocks(pair)]
    assert names[:5] == [f"teacher.stage{s}.block{b}" for s, b in ((1, 1), (2, 1), (3, 1), (3, 2), (4, 1))]
    assert names[5:] == [f"student.stage{s}.block{b}" for s, b in ((1, 1), (2, 1), (3, 1), (3, 2), (4, 1))]
    with torch.no_grad(), capture(pair, stages=[3], blocks=[2]) as cap:
        pair(image)
    assert list(cap) == ["teacher.stage3.block2", "student.stage3.block2"]
    teacher, student = cap["teacher.stage3.block2"], cap["student.stage3.block2"]
    assert (teacher.layer_type, student.layer_type) == ("CotLayer", "CoXtLayer")
    assert (teacher.module_path, student.module_path) == ("teacher.layer3.1", "student.layer3.1")
    assert (teacher.input_size, student.input_size) == ((64, 64), (128, 128))  # each network's own input
    assert (teacher.feature_size, student.feature_size) == ((4, 4), (8, 8))
    assert teacher.feature_stride == student.feature_stride == 16
    # each record equals capturing that network alone
    with torch.no_grad(), capture(pair.student, stages=[3], blocks=[2]) as alone:
        pair.student(pair.up(image))
    assert torch.equal(alone["stage3.block2"].tensor("attention"), student.tensor("attention"))
    assert leftover_hooks(pair) == []


def test_ranges_and_selection_hold_in_every_network(make_tiny: MakeTiny) -> None:
    deep = make_tiny("cotnet")  # stage 3 has 2 blocks
    shallow = make_tiny("cotnet")
    stage3 = shallow.get_submodule("layer3")
    assert isinstance(stage3, nn.Sequential)
    del stage3[1]  # stage 3 has 1 block
    pair = Pair(deep, shallow)
    assert stage_range(pair) == range(1, 5)
    assert block_range(pair, 3) == range(1, 2)  # block 2 exists only in one network
    with pytest.raises(CaptureError, match=r"^block 2 out of range: stage 3 of Pair has blocks 1\.\.1 in each of its 2 "):
        capture(pair, stages=[3], blocks=[2])
    with pytest.raises(CaptureError, match=r"^stage 5 out of range: Pair has stages 1\.\.4 in each of its 2 CoT"):
        capture(pair, stages=[5])
    # stages without blocks: every block of that stage, in each network
    with capture(pair, stages=[3]) as cap:
        pass
    assert [s.info.name for s in cap.sites] == ["teacher.stage3.block1", "teacher.stage3.block2",
                                                 "student.stage3.block1"]


def test_a_cot_layer_beside_a_network_is_recorded_too(make_tiny: MakeTiny, image: Tensor) -> None:
    class WithHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = make_tiny("cotnet")
            self.lift = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.extra = CotLayer(16, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.backbone(x) + self.extra(self.lift(x)).mean()

    model = WithHead().eval()
    with torch.no_grad(), capture(model, taps=["output"]) as cap:
        model(image)
    assert list(cap) == [b.name for b in cot_blocks(model.backbone)] + ["extra"]  # forward order
    assert cap["extra"].stage == 0 and cap["extra"].input_size == (64, 64)  # the model's input
    assert cap["extra"].feature_size == (32, 32) and cap["extra"].feature_stride == 2
    assert cap["stage3.block1"].input_size == (64, 64)
    with torch.no_grad(), capture(model, stages=[3], blocks=[1]) as cap:  # stage-0 layers are not in a stage
        model(image)
    assert list(cap) == ["stage3.block1"]
