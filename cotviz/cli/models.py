"""``cotviz models``: the registered variants as a table (or JSON).

Nothing is built: parameter and CoT-layer counts come from :func:`cotviz.models.meta.model_figures` (the
recorded figures, tested equal to a meta-device build of every model).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cotviz.cli._common import FLAG, console, handle_errors, print_json

__all__ = ["models"]


def _rows(pattern: str) -> list[dict[str, Any]]:
    from cotviz.errors import UnknownModelError
    from cotviz.models.demo import DEMO_ACCURACY
    from cotviz.models.meta import model_figures
    from cotviz.models.registry import list_models, model_entry

    names = list_models(pattern)
    if not names:
        raise UnknownModelError(f"no registered model matches {pattern!r} (`cotviz models` lists them all)")
    rows = []
    for name in names:
        entry = model_entry(name)
        figures = model_figures(name)
        cfg = entry.pretrained_cfg
        rows.append({
            "name": name,
            "aliases": list(entry.aliases),
            "params": figures.params,
            "input_size": cfg.image_size,
            "crop_pct": cfg.crop_pct,
            "interpolation": cfg.interpolation,
            "cot_layers": figures.cot_layers,
            "paper_top1": entry.paper.top1 if entry.paper else None,
            "demo_heldout_top1": DEMO_ACCURACY.get(name),
            "description": entry.description or (entry.builder.__doc__ or "").strip().splitlines()[0],
        })
    return rows


@handle_errors
def models(
    pattern: Annotated[str, typer.Argument(metavar="PATTERN", help="Shell-style filter, e.g. 'cotnext*'.")] = "*",
    json_out: Annotated[bool, typer.Option("--json", metavar=FLAG, help="Print JSON instead of a table.")] = False,
) -> None:
    """List the registered models: name, aliases, parameters, input size, crop_pct, CoT layers."""
    rows = _rows(pattern)
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title="cotviz models", title_justify="left",
                  caption="size: pretrained input (px); CoT: number of CoT layers; top-1: official README, ImageNet val "
                          "(demo models: held-out cotviz.data shapes, weights='demo')",
                  caption_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("aliases", no_wrap=True)
    for col in ("params", "size", "crop", "CoT", "top-1"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(r["name"], ", ".join(r["aliases"]), f"{r['params'] / 1e6:.2f}M", str(r["input_size"]),
                      f"{r['crop_pct']:.3f}", str(r["cot_layers"]),
                      f"{r['paper_top1']:.1f}%" if r["paper_top1"] is not None else
                      f"{r['demo_heldout_top1']:.1f}% shapes" if r["demo_heldout_top1"] is not None else "-")
    console().print(table)
