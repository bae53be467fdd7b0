"""``compare --image``: the same maps of every operator that has a local attention, for one image, side by side.

Every operator's network is built on the same skeleton (``create_model(skeleton, spatial_layer=spec)``), with a
checkpoint when one is given for its spec, else as the untrained demo network (same seed, same recipe as
``cotviz attention``; the figure says so). Each goes through the explain runner (:class:`cotviz.explain.Explainer`)
for the same image and block; operators without attention (``conv``, ``static``) are listed as such.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cotviz.analysis.maps import map_key
from cotviz.errors import InvalidArgumentError
from cotviz.explain import Explainer, Explanation
from cotviz.explain.inputs import ImageInput
from cotviz.io.outputs import OutputPaths, ensure_out_dir, save_figure, write_json, write_npz
from cotviz.models.untrained import UNTRAINED_NOTE, load_model

__all__ = ["COMPARE_MAPS", "compare_maps", "explain_operators"]

#: The maps drawn for every operator (each operator's own definition, see ``cotviz.analysis.catalog``).
COMPARE_MAPS: tuple[str, ...] = ("attention_entropy", "center_weight", "attention_energy")


def explain_operators(specs: Sequence[str], image: ImageInput, *, skeleton: str = "cotnet50", stage: int = 3,
                      block: int | None = None, maps: Sequence[str] = COMPARE_MAPS,
                      weights: Mapping[str, str | os.PathLike[str]] | None = None,
                      preprocess: Mapping[str, Any] | None = None) -> dict[str, Explanation | str]:
    """spec -> the Explanation of ``image`` at ``stage`` (one block: ``block``, default the stage's last block with
    attention), or a sentence saying why the operator has none."""
    from cotviz.capture import cot_blocks
    from cotviz.models.meta import build_meta_model

    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(specs))
    if unknown:
        raise InvalidArgumentError(f"--weights for {', '.join(unknown)}, which is not among the compared operators "
                                   f"({', '.join(specs)})")
    out: dict[str, Explanation | str] = {}
    for spec in specs:
        layout = build_meta_model(skeleton, spatial_layer=spec)  # the layout only: no weights, no calibration
        attending = [b for b in cot_blocks(layout) if "attention" in b.taps]
        with_attention = [b.block for b in attending if b.stage == stage]
        if not with_attention:
            out[spec] = "no local attention in this operator" if not attending else f"no attention in stage {stage}"
            continue
        lm = load_model(skeleton, weights.get(spec), label=f"{skeleton}[{spec}]", spatial_layer=spec)
        chosen = block if block is not None else with_attention[-1]
        explainer = Explainer(lm, stage=stage, blocks=[chosen], maps=maps, preprocess=preprocess)
        out[spec] = explainer.explain(image)
    return out


def compare_maps(specs: Sequence[str], image: ImageInput, *, out_dir: str | Path, skeleton: str = "cotnet50",
                 stage: int = 3, block: int | None = None, maps: Sequence[str] = COMPARE_MAPS,
                 weights: Mapping[str, str | os.PathLike[str]] | None = None, format: str = "png", dpi: float = 100,
                 preprocess: Mapping[str, Any] | None = None) -> OutputPaths:
    """Explain ``image`` with every operator and write one figure (a row per operator), one ``.npz``
    (``"<spec>/<block>/<map>"`` and ``input``) and one ``.json`` (per operator, the attention command's metadata).
    """
    from cotviz.viz.compare import OperatorMaps, comparison_figure

    results = explain_operators(specs, image, skeleton=skeleton, stage=stage, block=block, maps=maps,
                                weights=weights, preprocess=preprocess)
    done = [e for e in results.values() if isinstance(e, Explanation)]
    if not done:
        raise InvalidArgumentError(f"none of {', '.join(specs)} has a local attention to draw")
    first = done[0]
    assert first.image is not None
    rows, arrays, meta = [], {"input": first.image}, {}
    for spec, ex in results.items():
        if isinstance(ex, str):
            rows.append(OperatorMaps(spec, None, note=ex))
            meta[spec] = {"attention": False, "note": ex}
            continue
        (block_name, block_maps), = ex.maps.items()
        rows.append(OperatorMaps(f"{spec} · {block_name}", block_maps, ex.geometry[block_name].feature_stride))
        for name, m in block_maps.items():
            arrays[f"{spec}/{map_key(block_name, name)}"] = m
        meta[spec] = {"attention": True, **ex.to_json()}
    notes = []
    if any(isinstance(e, Explanation) and e.metadata is not None and e.metadata.model.get("untrained") for e in done):
        notes.append(f"UNTRAINED networks: {UNTRAINED_NOTE}. Pass --weights SPEC=FILE for trained maps.")
    notes.append("colour scales are shared by all operators per column; CoT's A is a GroupNorm output (entropy and "
                 "centre weight of softmax(A)), sa's A is already a softmax (its own entropy and centre weight)")
    fig = comparison_figure(first.image, rows, list(maps), notes=notes, dpi=dpi,
                            title=f"{skeleton}: operators compared at stage {stage} · {Path(str(first.source)).name}")
    out = ensure_out_dir(out_dir)
    stem = Path(first.source).stem if first.metadata and first.metadata.input and first.metadata.input.path \
        else "image"
    paths = OutputPaths(out, f"{stem}_{skeleton}_compare_stage{stage}", format)
    save_figure(fig, paths.figure, format, dpi=dpi)
    write_npz(paths.npz, arrays)
    write_json(paths.json, {"schema_version": 1, "command": "compare", "skeleton": skeleton, "stage": stage,
                            "maps": list(maps), "operators": meta,
                            "outputs": {"figure": str(paths.figure), "npz": str(paths.npz)}})
    return paths
