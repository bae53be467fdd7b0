"""Exact values against the official CoTNet code (goldens in ``../shared/reference/``).

Every entry of ``cot_block_golden.pt`` / ``cot_block_golden_extra.pt`` (CoT and CoXt layers with every
tap, the debug entry with every intermediate, and the CoTNet / CoTNeXt / SE-CoTNetD bottlenecks) and
both tiny whole networks (logits, pooled features, per-channel means of every recorded module, feature
summaries, and the float64 logits). The goldens are float64 computations of the official model rounded
to float32; the reference README suggests ``atol=rtol=1e-4`` in float32 and allows 1e-10 in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from _helpers import TINY_GOLDEN_NETS
from torch import Tensor, nn

from cotviz.layers import TAP_NAMES, CotLayer, CoXtLayer, create_spatial_layer
from cotviz.models import Bottleneck, CoTResNet, HybridRouting, create_model
from cotviz.models.resnet import _downsample

ATOL = RTOL = 1e-4  # float32 vs the float64 reference (README: observed max deviation 5e-6)
ATOL_FP64 = RTOL_FP64 = 1e-8

BLOCK_FILES = ("cot_block_golden.pt", "cot_block_golden_extra.pt")
#: Entries of the block golden files, by file (the tests assert this list is complete).
LAYER_ENTRIES = {
    "cot_block_golden.pt": ("cot_dim64_k3_s1", "cot_dim128_k3_s2", "cot_dim64_k5_s1"),
    "cot_block_golden_extra.pt": ("coxt_dim96_k3_s1", "cot_dim64_k3_s1_debug_all_intermediates"),
}
BOTTLENECK_ENTRIES = (
    "cotnet_bottleneck_s2", "cotnext_bottleneck_s1", "se_cotnetd_cot_bottleneck_s2",
    "se_cotnetd152_cot_bottleneck_s2", "se_cotnetd_splitattn_bottleneck_s2",
    "se_cotnetd152_splitattn_bottleneck_s2",
)
#: Golden tensor name -> (module path inside the CoT layer, "out" = its output | "in" = its first input).
LAYER_PROBES: dict[str, tuple[str, str]] = {
    **{tap: (tap, "out") for tap in TAP_NAMES},
    "embed_pre_groupnorm": ("embed.3", "out"),
    "attention_groupnorm_out": ("embed.4", "out"),
    "value": ("conv1x1", "out"),
    "local_conv_input": ("local_conv", "in"),
    "aggregated": ("local_conv", "out"),
    "x_gap": ("se", "in"),
    "fusion_logits": ("se", "out"),
}
#: Entry fields that are not reference tensors of the layer's computation.
NON_PROBE_FIELDS = {"official_class", "kwargs", "stride", "pre_pool", "state_dict", "input",
                    "max_abs_diff_fp32_vs_fp64"}


@contextmanager
def probe(model: nn.Module, probes: dict[str, tuple[str, str]]) -> Iterator[dict[str, Tensor]]:
    """Record ``{name: detached clone}`` of the output ("out") or first input ("in") of submodules.

    Plain forward hooks, removed on exit (also after an exception). Clones, because the networks use
    in-place ReLU and ``+=`` that would otherwise rewrite the stored tensors.
    """
    records: dict[str, Tensor] = {}
    handles = []

    def make_hook(name: str, where: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            records[name] = (args[0] if where == "in" else output).detach().clone()
        return hook

    try:
        for name, (path, where) in probes.items():
            handles.append(model.get_submodule(path).register_forward_hook(make_hook(name, where)))
        yield records
    finally:
        for h in handles:
            h.remove()


def assert_close(got: Tensor, expected: Tensor, what: str, atol: float = ATOL, rtol: float = RTOL) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(got, expected.to(got.dtype), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module")
def block_goldens(load_reference: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Both block golden files: ``{file: {entry: {...}}}``."""
    return {f: load_reference(f) for f in BLOCK_FILES}


def _entry(goldens: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    hits = [d[name] for d in goldens.values() if name in d]
    assert len(hits) == 1, f"golden entry {name} found {len(hits)} times"
    return hits[0]


def test_golden_files_hold_exactly_the_tested_entries(block_goldens: dict[str, dict[str, Any]]) -> None:
    tested = set(BOTTLENECK_ENTRIES) | {e for entries in LAYER_ENTRIES.values() for e in entries}
    assert {e for d in block_goldens.values() for e in d} == tested


# --------------------------------------------------------------------------------------------------
# CoT / CoXt layers: every tap (and every intermediate of the debug entry)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry_name", [e for entries in LAYER_ENTRIES.values() for e in entries])
def test_cot_layer_golden(entry_name: str, block_goldens: dict[str, dict[str, Any]]) -> None:
    e = _entry(block_goldens, entry_name)
    cls = CoXtLayer if "CoXtLayer" in e["official_class"] else CotLayer
    # through the factory's options: CotLayer(64, kernel_size=5) is create_spatial_layer("cot", 64, kernel=5)
    layer = create_spatial_layer("cot", e["kwargs"]["dim"], kernel=e["kwargs"]["kernel_size"],
                                 cardinality=2 if cls is CoXtLayer else 1)
    assert type(layer) is cls
    layer.load_state_dict(e["state_dict"], strict=True)
    layer.eval()
    x = e["input"]
    if e["stride"] == 2:
        # official CoTNet Bottleneck.avd: the CoT layer has no stride, the block pools before it
        assert "AvgPool2d" in e["pre_pool"]
        x = nn.AvgPool2d(3, 2, padding=1)(x)
    names = [k for k in e if k not in NON_PROBE_FIELDS]
    assert set(TAP_NAMES) <= set(names)
    unknown = set(names) - set(LAYER_PROBES)
    assert not unknown, f"golden tensors this test does not know how to check: {unknown}"
    with torch.no_grad(), probe(layer, {n: LAYER_PROBES[n] for n in names}) as rec:
        out = layer(x)
    for n in names:
        assert_close(rec[n], e[n], f"{entry_name}.{n}")
    assert_close(out, e["output"], f"{entry_name} return value")


# --------------------------------------------------------------------------------------------------
# Bottlenecks
# --------------------------------------------------------------------------------------------------


def build_bottleneck(e: dict[str, Any]) -> Bottleneck:
    """Our :class:`Bottleneck` with the arguments the official block of entry ``e`` was built with."""
    kw = e["kwargs"]
    hybrid = "hybrid" in e["official_class"]  # cotnet_hybrid.CoTBottleneck (SE-CoTNetD)
    outplanes = kw["planes"] * Bottleneck.expansion
    down = (_downsample(kw["inplanes"], outplanes, kw["stride"], avg_down=hybrid)
            if kw["stride"] != 1 or kw["inplanes"] != outplanes else None)
    width = int(kw["planes"] * kw["base_width"] / 64) * kw["cardinality"]
    if hybrid:
        routing = HybridRouting(frozenset(kw["conv_dim"]), kw["c4_dim"], frozenset(kw["c4_idx"]))
        blur = kw["aa_layer"] is not None and kw["avd"] and not kw["avd_first"]
        return Bottleneck(kw["inplanes"], kw["planes"], kw["stride"], down,
                          spatial_layer=routing(1, kw["block_idx"], width), cardinality=kw["cardinality"],
                          base_width=kw["base_width"], spatial_act_layer=nn.SiLU,
                          downsample_mode="blur" if blur else "op")
    return Bottleneck(kw["inplanes"], kw["planes"], kw["stride"], down, spatial_layer="cot",
                      cardinality=kw["cardinality"], base_width=kw["base_width"])


@pytest.mark.parametrize("entry_name", BOTTLENECK_ENTRIES)
def test_bottleneck_golden(entry_name: str, block_goldens: dict[str, dict[str, Any]]) -> None:
    e = _entry(block_goldens, entry_name)
    block = build_bottleneck(e)
    block.load_state_dict(e["state_dict"], strict=True)
    block.eval()
    expect_cot = "splitattn" not in entry_name
    assert isinstance(block.conv2, CotLayer) == expect_cot
    assert ("conv2.output" in e) == expect_cot
    probes = {"conv2.output": ("conv2.output", "out")} if expect_cot else {}
    with torch.no_grad(), probe(block, probes) as rec:
        out = block(e["input"].clone())
    if expect_cot:
        assert_close(rec["conv2.output"], e["conv2.output"], f"{entry_name}.conv2.output")
    assert_close(out, e["output"], f"{entry_name}.output")


# --------------------------------------------------------------------------------------------------
# Tiny whole networks
# --------------------------------------------------------------------------------------------------


def build_tiny(golden: dict[str, Any], file: str, dtype: torch.dtype = torch.float32) -> CoTResNet:
    name, kwargs = TINY_GOLDEN_NETS[file]
    model = create_model(name, **kwargs)
    assert isinstance(model, CoTResNet)
    model.load_state_dict(golden["state_dict"], strict=True)  # float16-exact values, copied into float32
    return model.to(dtype).eval()


@pytest.fixture(scope="module", params=list(TINY_GOLDEN_NETS))
def tiny_run(request: pytest.FixtureRequest, load_reference: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """One float32 forward of a tiny network with every recorded module hooked.

    Returns ``{"golden", "model", "logits", "pooled", "outputs": {module path: output}}``.
    """
    file: str = request.param
    golden = load_reference(file)
    model = build_tiny(golden, file)
    paths = set(golden["channel_means"]) | set(golden["feature_summary"])
    x = golden["input"]
    with torch.no_grad(), probe(model, {p: (p, "out") for p in paths}) as outputs:
        logits = model(x)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    return {"file": file, "golden": golden, "model": model, "logits": logits, "pooled": pooled,
            "outputs": dict(outputs)}


def test_tiny_logits(tiny_run: dict[str, Any]) -> None:
    g = tiny_run["golden"]
    assert_close(tiny_run["logits"], g["logits"], f"{tiny_run['file']} logits")
    assert_close(tiny_run["logits"], g["logits_fp32_eval"], f"{tiny_run['file']} logits vs official float32 run")


def test_tiny_pooled_features(tiny_run: dict[str, Any]) -> None:
    assert_close(tiny_run["pooled"], tiny_run["golden"]["pooled_features"], f"{tiny_run['file']} pooled features")


def test_tiny_channel_means(tiny_run: dict[str, Any]) -> None:
    for path, expected in tiny_run["golden"]["channel_means"].items():
        got = tiny_run["outputs"][path].mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        assert_close(got, expected, f"{tiny_run['file']} channel means of {path}")


def test_tiny_feature_summary(tiny_run: dict[str, Any]) -> None:
    for path, summary in tiny_run["golden"]["feature_summary"].items():
        out = tiny_run["outputs"][path].double()
        if path == "global_pool":
            out = out.flatten(1)  # (B, C, 1, 1) -> (B, C), as the official forward_features + flatten
        assert list(out.shape) == summary["shape"], f"{path}: shape {list(out.shape)} != {summary['shape']}"
        stats = torch.stack([out.mean(), out.std(), out.abs().max()])
        expected = torch.tensor([summary["mean"], summary["std"], summary["abs_max"]], dtype=torch.float64)
        assert_close(stats, expected, f"{tiny_run['file']} mean/std/abs_max of {path}")


def test_tiny_structure(tiny_run: dict[str, Any]) -> None:
    model, g = tiny_run["model"], tiny_run["golden"]
    assert [p for p, m in model.named_modules() if isinstance(m, CotLayer)] == g["cot_layer_names"]
    assert sum(p.numel() for p in model.parameters()) == g["num_params"]


@pytest.mark.parametrize("file", list(TINY_GOLDEN_NETS))
def test_tiny_logits_float64(file: str, load_reference: Callable[[str], dict[str, Any]]) -> None:
    golden = load_reference(file)
    model = build_tiny(golden, file, torch.float64)
    with torch.no_grad():
        logits = model(golden["input"].double())
    assert logits.dtype == torch.float64
    assert_close(logits, golden["logits_fp64"], f"{file} float64 logits", atol=ATOL_FP64, rtol=RTOL_FP64)


def test_cot_spec_with_explicit_default_options_reproduces_the_tiny_cotnet(
        load_reference: Callable[[str], dict[str, Any]]) -> None:
    """The spec path (options spelled out at their defaults) builds the official network, value for value."""
    golden = load_reference("tiny_cotnet_golden.pt")
    name, kwargs = TINY_GOLDEN_NETS["tiny_cotnet_golden.pt"]
    model = create_model(name, spatial_layer="cot:kernel=3,key_kernel=3,share_planes=8", **kwargs)
    model.load_state_dict(golden["state_dict"], strict=True)
    with torch.no_grad():
        logits = model(golden["input"])
    assert_close(logits, golden["logits"], "tiny_cotnet logits through the cot spec")
