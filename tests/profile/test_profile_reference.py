"""The official table, reproduced: params vs the manifest and MACs vs the official counter, every variant.

``flops_reference.json`` (``../shared/reference``) holds what the official ``utils/flops_counter.py`` gives
for every variant at 224 and at its default_cfg resolution, and per-module-type / per-CoT-sub-module
breakdowns for three variants. Under ``--convention official`` cotviz must match them exactly.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from cotviz.profile import build_report, count_model
from cotviz.profile.counting import CountResult

VARIANTS = ("cotnet50", "cotnet101", "cotnext50_2x48d", "cotnext101_2x48d", "se_cotnetd_50", "se_cotnetd_101",
            "se_cotnetd_152", "se_cotnetd_152_L", "se_cotnetd_200", "se_cotnetd_270")
#: Our module class names for the official counter's type names.
OFFICIAL_TYPE = {"LocalConvolution": "LocalAggregation"}


@pytest.fixture(scope="module")
def flops_reference(reference_dir: Path) -> dict[str, Any]:
    with open(reference_dir / "flops_reference.json", encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


@pytest.fixture(scope="module")
def counts(flops_reference: dict[str, Any], meta_model: Callable[[str], nn.Module]
           ) -> dict[tuple[str, int], tuple[nn.Module, CountResult]]:
    """Every variant counted at every size the reference lists (224 and the default resolution)."""
    out = {}
    for name in VARIANTS:
        model = meta_model(name)
        for size in flops_reference["totals"][name]:
            out[name, int(size)] = model, count_model(model, (1, 3, int(size), int(size)))
    return out


def test_reference_covers_every_variant(flops_reference: dict[str, Any], manifest: dict[str, Any]) -> None:
    assert set(flops_reference["totals"]) == set(VARIANTS) == set(manifest)


@pytest.mark.parametrize("name", VARIANTS)
def test_official_macs_and_params_match_exactly(name: str, flops_reference: dict[str, Any],
                                                manifest: dict[str, Any], counts: dict[Any, Any]) -> None:
    sizes = flops_reference["totals"][name]
    default = manifest[name]["default_cfg"]["input_size"][-1]
    assert {224, default} == {int(s) for s in sizes}  # both the README/default resolution and 224
    for size, ref in sizes.items():
        model, result = counts[name, int(size)]
        report = build_report(result, model=name, convention="official")
        assert report.params == manifest[name]["params"] == ref["params_counted"]
        assert report.params == sum(p.numel() for p in model.parameters())
        assert report.macs == ref["macs"], f"{name} at {size}: {report.macs:,} vs official {ref['macs']:,}"
        assert report.flops == 2 * ref["macs"]


def test_readme_table_rows(flops_reference: dict[str, Any], counts: dict[Any, Any]) -> None:
    """The README rows: each resolution's GMACs, rounded as the README prints them (one decimal)."""
    for row in flops_reference["readme_table"]:
        name = row["registered_model"]
        for size, gmacs in row["computed_gmacs"].items():
            macs = build_report(counts[name, int(size)][1], model=name, convention="official").macs
            assert round(macs / 1e9, 4) == gmacs
        best = min(row["computed_gmacs"], key=lambda s: abs(row["computed_gmacs"][s] - float(row["readme_flops_g"])))
        assert f"{row['computed_gmacs'][best]:.1f}" == row["readme_flops_g"]


@pytest.mark.parametrize("name", ["cotnet50", "cotnext50_2x48d", "se_cotnetd_50"])
def test_breakdown_by_module_type_and_cot_submodule(name: str, flops_reference: dict[str, Any],
                                                    counts: dict[Any, Any]) -> None:
    ref = flops_reference["breakdown"][name]
    result = counts[name, ref["input_size"]][1]
    report = build_report(result, model=name, convention="official")
    assert report.module_types == {OFFICIAL_TYPE.get(k, k): v for k, v in ref["by_module_type"].items()}
    per_layer: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for call in result.official:
        for layer in ref["per_cot_layer"]:
            if call.module.startswith(layer + "."):
                per_layer[layer][call.module[len(layer) + 1:]] += call.macs
    assert {k: dict(v) for k, v in per_layer.items()} == ref["per_cot_layer"]


def test_complete_convention_differs_only_where_documented(counts: dict[Any, Any]) -> None:
    """complete - official = the ops the official counter skips + rule differences (bias, CoXt quirk, pools)."""
    result = counts["cotnext50_2x48d", 224][1]
    complete = build_report(result, model="cotnext50_2x48d", convention="complete")
    official = build_report(result, model="cotnext50_2x48d", convention="official")
    assert complete.other_convention["macs"] == official.macs and official.other_convention["macs"] == complete.macs
    by_c = {o.type: o.macs for o in complete.operators}
    by_o = {o.type: o.macs for o in official.operators}
    assert by_c["conv"] == by_o["conv"]  # same conv rule, bias included
    assert 2 * by_c["local aggregation"] == by_o["local aggregation"]  # the CoXt double count
    assert by_c["linear"] - by_o["linear"] == 1000  # the fc bias
    assert not [u for u in complete.uncounted]  # every op of the zoo has a rule
