"""``cotviz models``: the registered variants as a table (or JSON)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cotviz.cli._common import console, handle_errors, print_json


def _rows(pattern: str) -> list[dict[str, Any]]:
    from cotviz.layers.cot import CotLayer
    from cotviz.models.registry import list_models, model_entry
    from cotviz.profile.counting import build_meta_model

    rows = []
    for name in list_models(pattern):
        entry = model_entry(name)
        model = build_meta_model(name)  # shapes only: no memory, no compute, no init
        cfg = entry.pretrained_cfg
        rows.append({
            "name": name,
            "aliases": list(entry.aliases),
            "params": sum(p.numel() for p in model.parameters()),
            "input_size": cfg.image_size,
            "crop_pct": cfg.crop_pct,
            "interpolation": cfg.interpolation,
            "cot_layers": sum(isinstance(m, CotLayer) for m in model.modules()),
            "paper_top1": entry.paper.top1 if entry.paper else None,
            "description": entry.description or (entry.builder.__doc__ or "").strip().splitlines()[0],
        })
    return rows


@handle_errors
def models(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter, e.g. 'cotnext*'.")] = "*",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the registered models: name, aliases, parameters, input size, crop_pct, CoT layers."""
    rows = _rows(pattern)
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="cotviz models", title_justify="left",
                  caption="size: pretrained input (px); CoT: number of CoT layers; top-1: official README, ImageNet val",
                  caption_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("aliases", no_wrap=True)
    for col in ("params", "size", "crop", "CoT", "top-1"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(r["name"], ", ".join(r["aliases"]), f"{r['params'] / 1e6:.2f}M", str(r["input_size"]),
                      f"{r['crop_pct']:.3f}", str(r["cot_layers"]),
                      f"{r['paper_top1']:.1f}%" if r["paper_top1"] is not None else "-")
    console().print(table)
