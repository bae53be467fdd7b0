"""The explorer page: one self-contained HTML file (inline CSS and JS, data embedded as base64 binary).

No network access, no CDN: the image is an inline PNG, the colour maps are 256-entry tables taken from
matplotlib (the figures' colours), the arrays are little-endian float32 or float16 in base64.

What is float16 (:func:`encode_array`): only the per-head maps (``"<block>/<map>/heads"``), and only when the
float16 rounding error stays below 1/1000 of every head's own value range (under a quarter of one of the colour
bar's 256 steps) and within float16's range; otherwise, and for everything else -- the maps as ``.npz`` holds
them (``"<block>/<map>"``), every cell's kernels (``"<block>/attention"``, the input of the rollout) -- float32.
The page lists which arrays are which; numbers read from float16 arrays are marked ``≈``.

The page itself (``assets/explorer.js``) composes only the local rollout of the hovered cell, with the
definition of :mod:`cotviz.analysis.rollout` (abs-normalised windows, mean over heads, the transposes of the
window, of ``AvgPool2d(3, 2, 1)`` and of ``BlurPool2d``), tested against the library in a real browser.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cotviz.analysis.catalog import MAP_INFO
from cotviz.errors import InvalidArgumentError, OutputError, ResourceLimitError
from cotviz.explore.cells import CellData
from cotviz.io.outputs import json_text, write_text

__all__ = ["BUDGET_BYTES", "BlockView", "Explorer", "ExplorerData", "build_page", "check_out_path", "check_page_size", "encode_array"]

#: The size budget of a page for stage 3 of cotnet50 at 224 with every block (issue 14): 5 MB.
BUDGET_BYTES = 5_000_000
#: Pages whose arrays would exceed this are refused (a browser decodes every array into memory).
MAX_PAGE_BYTES = 200_000_000
#: Room for the colour tables, the JSON's text and the map definitions in :func:`check_page_size`.
PAGE_OVERHEAD = 100_000
#: float16 is used for a map when its rounding error is below this fraction of each head's value range.
FLOAT16_TOLERANCE = 1e-3
KERNEL_CMAP = "RdBu_r"  # the figures' kernel colours (cotviz.viz.figures)
ROLLOUT_CMAP = "magma"  # the figures' rollout colours
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BlockView:
    """One recorded block: ``name``, ``feature_size`` (H, W) cells of ``feature_stride`` model-input pixels,
    ``kernel_size`` K, ``heads`` M; ``shown``: it has maps on the page (the others only feed the rollout)."""

    name: str
    feature_size: tuple[int, int]
    feature_stride: int
    kernel_size: int
    heads: int
    shown: bool
    pooled_before: bool = False
    blurred_after: bool = False


@dataclass(frozen=True)
class ExplorerData:
    """Everything a page shows, as plain arrays (what :meth:`cotviz.explain.Explanation.explore` passes).

    Attributes:
        image: (S, S, 3) uint8, the pixels the model saw.
        blocks: every recorded block in order (:class:`BlockView`).
        maps: shown block -> map -> (H, W) float32, the ``.npz`` maps (mean over heads), or None when the
            explanation was made for one head (then only ``cells.head_maps`` are shown).
        cells: every cell's kernels, per-head maps and the rollout plan (:class:`CellData`).
        map_names: registry names of the maps, in order.
        title, notes: the header line and the notes (e.g. the untrained warning).
        details: label -> text lines for the page's "about" table (model, weights, input, prediction).
        crop_box, original_size: where the model input lies in the original image (None for a tensor).
        initial: ``{"block": name, "map": name, "head": int | None, "cell": (row, col)}`` to start from.
    """

    image: np.ndarray
    blocks: Sequence[BlockView]
    maps: Mapping[str, Mapping[str, np.ndarray]] | None
    cells: CellData
    map_names: Sequence[str]
    title: str
    notes: Sequence[str] = ()
    details: Mapping[str, str] = field(default_factory=dict)
    crop_box: tuple[float, float, float, float] | None = None
    original_size: tuple[int, int] | None = None
    initial: Mapping[str, Any] = field(default_factory=dict)


def check_page_size(data: ExplorerData) -> int:
    """An upper bound of the page's size in bytes (every array float32 in base64, the image as raw bytes twice,
    the script and styles, :data:`PAGE_OVERHEAD` for colour tables and text), refused over :data:`MAX_PAGE_BYTES`."""
    shown = [b.name for b in data.blocks if b.shown]
    values = sum(data.cells.attention[b.name].size for b in data.blocks)
    values += sum(data.cells.head_maps[b][m].size for b in shown for m in data.map_names)
    if data.maps is not None:
        values += sum(data.maps[b][m].size for b in shown for m in data.map_names)
    assets = sum(len(_asset(n)) for n in ("explorer.html", "explorer.css", "explorer.js"))
    bound = int(values) * 4 * 4 // 3 + np.asarray(data.image).size * 2 + assets + PAGE_OVERHEAD
    if bound > MAX_PAGE_BYTES:
        from cotviz.resources import format_bytes

        raise ResourceLimitError(f"the explorer page would be about {format_bytes(bound)} (over "
                                 f"{format_bytes(MAX_PAGE_BYTES)}, too much for a browser to hold); choose fewer "
                                 "blocks (--block), fewer maps (--map), a later stage or a smaller --size")
    return bound


def encode_array(a: np.ndarray, *, allow_float16: bool = False) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}``: ``a`` as little-endian float32 (or float16 when allowed and honest, see the
    module docstring; the head axis is the first) in base64."""
    a32 = np.ascontiguousarray(a, dtype="<f4")
    dtype = "float32"
    if allow_float16 and _float16_is_honest(a32):
        dtype = "float16"
    raw = (a32.astype("<f2") if dtype == "float16" else a32).tobytes()
    return {"dtype": dtype, "shape": list(a32.shape), "data": base64.b64encode(raw).decode("ascii")}


def _float16_is_honest(a: np.ndarray) -> bool:
    """True when every slice ``a[h]`` keeps its colour scale within :data:`FLOAT16_TOLERANCE` in float16."""
    finite = np.isfinite(a)
    if np.any(np.abs(a[finite]) > np.finfo(np.float16).max):
        return False
    with np.errstate(over="ignore"):
        err = np.abs(a.astype(np.float16).astype(np.float64) - a)
    for h in range(a.shape[0]):
        f = finite[h]
        if not f.any():
            continue
        span = float(a[h][f].max()) - float(a[h][f].min())
        if span <= 0 or float(err[h][f].max()) > FLOAT16_TOLERANCE * span:
            return False
    return True


def _lut(name: str) -> str:
    """A matplotlib colour map as 256 x RGB uint8, base64."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    rgb = np.round(np.asarray(cmap(np.linspace(0.0, 1.0, 256)))[:, :3] * 255).astype(np.uint8)  # (256, 3)
    return base64.b64encode(rgb.tobytes()).decode("ascii")


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _asset(name: str) -> str:
    return resources.files("cotviz.explore").joinpath("assets", name).read_text(encoding="utf-8")


def page_data(data: ExplorerData) -> dict[str, Any]:
    """The JSON the page reads (arrays encoded; see :func:`encode_array`).

    Raises:
        ResourceLimitError: the arrays would make a page over :data:`MAX_PAGE_BYTES` (checked before encoding).
    """
    img = np.asarray(data.image)
    check_page_size(data)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InvalidArgumentError(f"the explorer needs the (S, S, 3) uint8 image the model saw, got {img.shape}")
    shown = [b.name for b in data.blocks if b.shown]
    if not shown:
        raise InvalidArgumentError("the explorer needs at least one block with maps")
    arrays: dict[str, dict[str, Any]] = {}
    for b in data.blocks:
        arrays[f"{b.name}/attention"] = encode_array(data.cells.attention[b.name])  # (M, K, K, H, W)
    for name in shown:
        for m in data.map_names:
            if data.maps is not None:
                arrays[f"{name}/{m}"] = encode_array(data.maps[name][m])  # (H, W), the npz map
            arrays[f"{name}/{m}/heads"] = encode_array(data.cells.head_maps[name][m], allow_float16=True)  # (M, H, W)
    cmaps = sorted({MAP_INFO[m].cmap for m in data.map_names} | {KERNEL_CMAP, ROLLOUT_CMAP})
    return {
        "format_version": FORMAT_VERSION,
        "title": data.title,
        "notes": list(data.notes),
        "details": dict(data.details),
        "image": {"size": [int(img.shape[0]), int(img.shape[1])], "png": _png(img)},
        "crop_box": None if data.crop_box is None else list(data.crop_box),
        "original_size": None if data.original_size is None else list(data.original_size),
        "blocks": [{"name": b.name, "grid": list(b.feature_size), "stride": b.feature_stride, "kernel": b.kernel_size,
                    "heads": b.heads, "shown": b.shown, "pooled_before": b.pooled_before,
                    "blurred_after": b.blurred_after} for b in data.blocks],
        "maps": [{**MAP_INFO[m].describe(), "cmap": MAP_INFO[m].cmap} for m in data.map_names],
        "has_mean": data.maps is not None,
        "kernel_cmap": KERNEL_CMAP,
        "rollout_cmap": ROLLOUT_CMAP,
        "cmaps": {c: _lut(c) for c in cmaps},
        "rollout": {**data.cells.rollout.to_dict(), "normalization": "abs",
                    "definition": "cotviz.analysis.rollout (local_rollout, normalization='abs')"},
        "arrays": arrays,
        "initial": dict(data.initial),
    }


def check_out_path(path: str | Path) -> Path:
    """``path`` if a page can be written there (not a directory, its directory exists), else one clear error."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise OutputError(f"--out {out} is a directory; give the page's file name, e.g. {out / 'explore.html'}")
    if not out.parent.is_dir():
        raise OutputError(f"cannot write {out}: the directory {out.parent} does not exist")
    return out


@dataclass(frozen=True)
class Explorer:
    """A built page: ``html`` (the whole file), ``dtypes`` (array key -> "float32" / "float16").

    In a notebook it displays itself inline (``_repr_html_``: the page in a sandboxed ``<iframe srcdoc>``, so
    its script and styles stay inside and no server is needed).
    """

    html: str
    dtypes: Mapping[str, str]

    @property
    def nbytes(self) -> int:
        """Size of the file in bytes (UTF-8)."""
        return len(self.html.encode("utf-8"))

    def save(self, path: str | Path) -> Path:
        """Write the page to ``path`` atomically; returns the path."""
        out = check_out_path(path)
        write_text(out, self.html)
        return out

    def _repr_html_(self) -> str:
        return ('<iframe class="cotviz-explore" sandbox="allow-scripts" style="width:100%;height:900px;border:0" '
                f'srcdoc="{html.escape(self.html, quote=True)}"></iframe>')


def build_page(data: ExplorerData) -> Explorer:
    """The self-contained HTML page of :class:`ExplorerData`."""
    payload = page_data(data)
    text = json_text(payload).replace("</", "<\\/")  # no "</script>" can end the data block early
    page = (_asset("explorer.html")
            .replace("/*COTVIZ_CSS*/", _asset("explorer.css"))
            .replace("/*COTVIZ_JS*/", _asset("explorer.js"))
            .replace("__COTVIZ_TITLE__", html.escape(data.title))
            .replace("__COTVIZ_DATA__", text))
    return Explorer(page, {k: v["dtype"] for k, v in payload["arrays"].items()})
