"""Report aggregation: every breakdown adds up to the totals; argument validation; the API entry point."""

from __future__ import annotations

import pytest

from cotviz.errors import InvalidArgumentError, UnknownModelError
from cotviz.models import list_models
from cotviz.models.meta import build_meta_model
from cotviz.profile import build_report, count_model, profile_model, profile_models
from cotviz.profile.api import model_names
from cotviz.profile.counting import CountResult
from cotviz.profile.rules import KINDS

TINY = {"layers": [1, 1, 2, 1], "num_classes": 10}


@pytest.fixture(scope="module")
def result() -> CountResult:
    return count_model(build_meta_model("se_cotnetd_152", **TINY), (2, 3, 64, 64))


@pytest.mark.parametrize("convention", ["complete", "official"])
def test_breakdowns_add_up(result: CountResult, convention: str) -> None:
    r = build_report(result, model="tiny", convention=convention, depth=3)
    assert r.flops == 2 * r.macs
    assert sum(s.macs for s in r.stages) == r.macs and sum(s.params for s in r.stages) == r.params
    assert [s.name for s in r.stages] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [b.name for b in r.blocks] == ["layer1.0", "layer2.0", "layer3.0", "layer3.1", "layer4.0"]
    stem_head = sum(s.macs for s in r.stages if s.name in ("stem", "head"))
    assert sum(b.macs for b in r.blocks) + stem_head == r.macs
    assert r.modules is not None and sum(m.macs for m in r.modules) == r.macs
    assert sum(m.params for m in r.modules) == r.params
    assert sum(m.activation_bytes for m in r.modules) == r.memory.activations_total_bytes
    assert sum(o.macs for o in r.operators) == r.macs
    assert {o.type for o in r.operators} <= set(KINDS)


def test_blocks_name_their_spatial_operator(result: CountResult) -> None:
    r = build_report(result, model="tiny")
    # routing of se_cotnetd_* at base width 64: stages 1-2 SE, stage 3 CoT at even index, stage 4 CoT
    assert [b.type for b in r.blocks] == ["Bottleneck (SplitAttnConv2d)", "Bottleneck (SplitAttnConv2d)",
                                          "Bottleneck (CotLayer)", "Bottleneck (SplitAttnConv2d)",
                                          "Bottleneck (CotLayer)"]
    assert r.stages[1].type == "1 x Bottleneck"


def test_depth_rows_mark_own_ops(result: CountResult) -> None:
    r = build_report(result, model="tiny", depth=3)
    assert r.modules is not None
    own = {m.name for m in r.modules if m.name.endswith("(own ops)")}
    assert "layer1.0 (own ops)" in own  # the residual add lives in the block's own forward
    assert all(m.params == 0 for m in r.modules if m.name in own)
    assert "layer3.0.conv2" in {m.name for m in r.modules}


def test_memory_estimate(result: CountResult) -> None:
    r = build_report(result, model="tiny")
    m = r.memory
    assert m.input_bytes == 2 * 3 * 64 * 64 * 4 and m.output_bytes == 2 * 10 * 4
    assert m.input_bytes + m.output_bytes <= m.activations_peak_bytes <= m.input_bytes + m.activations_total_bytes
    assert m.weights_bytes == {"float32": 4 * r.params, "float16": 2 * r.params, "bfloat16": 2 * r.params,
                               "int8": r.params}
    assert m.buffers_bytes > 0  # BN running stats (+ BlurPool filters)


def test_notes_state_units_and_the_other_convention(result: CountResult) -> None:
    complete = build_report(result, model="tiny", convention="complete")
    assert any("FLOPs = 2 x MACs" in n for n in complete.notes)
    assert any(f"{complete.other_convention['macs']:,}" in n for n in complete.notes)
    official = build_report(result, model="tiny", convention="official")
    assert official.module_types and sum(official.module_types.values()) == official.macs
    assert {u.module_type for u in official.uncounted} >= {"GroupNorm", "BlurPool2d", "Bottleneck"}


def test_to_dict_has_the_documented_keys(result: CountResult) -> None:
    d = build_report(result, model="tiny", depth=2).to_dict()
    assert {"model", "size", "batch", "convention", "params", "macs", "flops", "stages", "operators",
            "uncounted", "memory", "blocks", "modules", "notes"} <= set(d)
    assert d["size"] == 64 and d["batch"] == 2 and d["stages"][0]["flops"] == 2 * d["stages"][0]["macs"]
    assert "measure" not in d


@pytest.mark.parametrize("bad", [{"convention": "fvcore"}, {"depth": 0}])
def test_build_report_rejects_bad_arguments(result: CountResult, bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        build_report(result, model="tiny", **bad)  # type: ignore[arg-type]


def test_profile_model_by_alias_uses_the_pretrained_size() -> None:
    r = profile_model("se_cotnetd152", convention="official")
    assert (r.model, r.size, r.batch, r.measure) == ("se_cotnetd_152", 256, 1, None)


@pytest.mark.parametrize("size", [0, -3, 31])
def test_profile_model_rejects_nonsensical_sizes(size: int) -> None:
    with pytest.raises(InvalidArgumentError, match="--size must be at least 32"):
        profile_model("cotnet50", size=size)


@pytest.mark.parametrize("bad, match", [({"convention": "fvcore"}, "unknown convention"),
                                        ({"dtype": "float8"}, "unknown dtype"), ({"batch": 0}, "--batch"),
                                        ({"depth": 0}, "--depth"), ({"size": 10**9}, "too large to count")])
def test_profile_models_validates_before_counting(bad: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        profile_models(["cotnet50", "no_such_model"], **bad)  # type: ignore[arg-type]


def test_profile_model_unknown_name_suggests() -> None:
    with pytest.raises(UnknownModelError, match="did you mean cotnet50"):
        profile_model("cotnet5")
    with pytest.raises(UnknownModelError, match="did you mean cotnet50"):
        profile_models(["cotnet50", "cotnet5"])  # every name is resolved before the first count


def test_profile_models_resolves_deduplicates_and_defaults_to_all() -> None:
    reports = profile_models(["cotnext101", "cotnext101_2x48d", "resnet50"], size=64)
    assert [(r.model, r.size) for r in reports] == [("cotnext101_2x48d", 64), ("resnet50", 64)]
    assert model_names(None) == list_models() and model_names(["SE-CoTNetD-50", "se_cotnetd50"]) == ["se_cotnetd_50"]
    with pytest.raises(InvalidArgumentError, match="at least one model"):
        profile_models([])


def test_odd_size_counts_by_hand() -> None:
    """resnet50 at 100 px: 50 (stem) -> 25 (max-pool) -> 13 -> 7 -> 4 (layer4), counted exactly at the edges."""
    r = profile_model("resnet50", size=100, convention="official", depth=1)
    assert r.modules is not None
    macs = {m.name: m.macs for m in r.modules}
    assert macs["conv1"] == 64 * 3 * 7 * 7 * 50 * 50  # Cout * Cin * K*K * Ho*Wo, no bias
    assert macs["maxpool"] == 64 * 50 * 50  # official pools: numel(input)
    assert macs["global_pool"] == 2048 * 4 * 4  # layer4 is 4x4 at 100 px
    assert macs["fc"] == 2048 * 1000  # in * out, no bias
    assert r.memory.input_bytes == 3 * 100 * 100 * 4 and r.memory.output_bytes == 1000 * 4
