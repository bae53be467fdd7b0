"""Output files: deterministic names, a writable output directory, and atomic figure / npz / JSON writes.

Names: ``<stem>_<model>_stage<N>.<ext>`` beside ``.npz`` and ``.json`` with the same base
(:func:`output_bases`). Inputs whose stems collide within one run are told apart deterministically:
first by their extension (``coffee-png_...``, ``coffee-jpg_...``), then, if still equal (same name in
different folders), by the first 8 hex digits of the SHA-1 of the resolved path. The same command gives
the same names; a rerun overwrites its own files.

Every file is written to a temporary name in the same folder and moved into place (``os.replace``),
so an interrupted run never leaves a half-written file under a final name. Figures carry no
timestamps (PDF ``CreationDate`` and SVG ``Date`` are dropped): identical runs give byte-identical PNG and
PDF files (SVG element ids are hashed from in-memory objects by matplotlib and may differ).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cotviz.errors import OutputError
from cotviz.formats import FigureFormat

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FigureFormat",
    "OutputPaths",
    "ensure_out_dir",
    "json_ready",
    "json_text",
    "markdown_table",
    "output_bases",
    "save_figure",
    "write_json",
    "write_npz",
    "write_text",
]


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _safe(text: str) -> str:
    """A file-name-safe version of ``text`` (runs of other characters become ``-``)."""
    return _UNSAFE.sub("-", text).strip("-") or "image"


class OutputPaths:
    """The three files of one image: ``figure``, ``npz`` and ``json`` under ``out_dir`` with one base name."""

    def __init__(self, out_dir: Path, base: str, fmt: str) -> None:
        self.base = base
        self.figure = out_dir / f"{base}.{fmt}"
        self.npz = out_dir / f"{base}.npz"
        self.json = out_dir / f"{base}.json"

    def as_dict(self) -> dict[str, str]:
        return {"figure": str(self.figure), "npz": str(self.npz), "json": str(self.json)}


def output_bases(paths: Sequence[Path], model: str, stage: int) -> list[str]:
    """Deterministic, unique base names ``<stem>_<model>_stage<N>`` for a run's inputs (in input order).

    See the module docstring for how colliding stems are disambiguated.
    """
    stems = [_safe(p.stem) for p in paths]
    keys = list(stems)
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    for i, p in enumerate(paths):
        if counts[stems[i]] > 1:
            ext = _safe(p.suffix.lstrip(".").lower()) if p.suffix else "noext"
            keys[i] = f"{stems[i]}-{ext}"
    counts2: dict[str, int] = {}
    for k in keys:
        counts2[k] = counts2.get(k, 0) + 1
    for i, p in enumerate(paths):
        if counts2[keys[i]] > 1:
            digest = hashlib.sha1(str(p.resolve()).encode("utf-8")).hexdigest()[:8]
            keys[i] = f"{keys[i]}-{digest}"
    tag = _safe(model)
    return [f"{k}_{tag}_stage{stage}" for k in keys]


def ensure_out_dir(path: str | Path) -> Path:
    """Create ``path`` (with parents) if needed and check that files can be written into it.

    Raises:
        OutputError: a file is in the way, a parent is not a directory, or writing is not permitted.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output directory {out} is an existing file; pass a directory to --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(
            f"cannot create output directory {out}: a parent path is a file, not a directory"
        ) from None
    except PermissionError:
        raise OutputError(f"cannot create output directory {out}: permission denied") from None
    except OSError as err:
        raise OutputError(f"cannot create output directory {out}: {err.strerror or err}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".cotviz-probe-", delete=True):
            pass
    except OSError as err:
        reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err))
        raise OutputError(f"output directory {out} is not writable: {reason}") from None
    return out


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(fh)`` into a temporary file beside ``path``, then move it into place.

    The temporary file is created with ``open(..., "xb")``, so the final file gets the usual permissions
    (``0o666`` minus the umask), unlike ``tempfile.mkstemp``'s ``0o600``.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_figure(fig: Figure, path: Path, fmt: str = "png", dpi: float | None = None, *,
                render: Callable[[Figure], Any] | None = None) -> None:
    """Save ``fig`` as ``fmt`` (png/svg/pdf) at ``path``, without timestamps, atomically.

    PNG: the Agg canvas is drawn once and written as RGB by :mod:`cotviz.io.png` (transparent parts composited
    over white), smaller and faster than matplotlib's RGBA writer and than Pillow's. ``render(fig)``, if given,
    draws the canvas instead of ``canvas.draw()`` and returns its (H_px, W_px, 4) uint8 RGBA pixels (e.g.
    :func:`cotviz.viz.render.render_rgba`, which reuses a cached static layer).
    """
    metadata: dict[str, Any] = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}.get(fmt, {})

    def write(fh: IO[bytes]) -> None:
        if fmt == "png":
            import numpy as np
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            from cotviz.io.png import encode_png

            if dpi is not None:
                fig.set_dpi(dpi)
            if render is not None:
                rgba = np.asarray(render(fig))  # (H_px, W_px, 4) uint8
            else:
                canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
                canvas.draw()
                rgba = np.asarray(canvas.buffer_rgba())  # (H_px, W_px, 4) uint8
            fh.write(encode_png(_over_white(rgba), dpi=fig.dpi))
            return
        fig.savefig(fh, format=fmt, dpi=dpi if dpi is not None else fig.dpi, metadata=metadata, facecolor="white")

    _atomic_write(path, write)


def _over_white(rgba: Any) -> Any:
    """(H, W, 4) uint8 RGBA composited over white -> (H, W, 3) uint8 (a view of the RGB bytes where all opaque)."""
    import numpy as np

    if (rgba[..., 3] == 255).all():
        return rgba[..., :3]
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.rint(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)


def write_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    """Raw arrays (``{"stage3.block2/attention_energy": (h, w), ...}``) as an uncompressed ``.npz``.

    Keys are kept as given (``np.load(path)[key]``); values are converted with ``numpy.asarray``.
    """
    import numpy as np

    data = {k: np.asarray(v) for k, v in arrays.items()}
    _atomic_write(path, lambda fh: np.savez(fh, **data))  # type: ignore[arg-type]


def json_ready(obj: Any) -> Any:
    """``obj`` with paths, tuples, numpy/torch scalars and non-finite floats made JSON-safe (NaN -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        return json_ready(item())
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return json_ready(tolist())
    return str(obj)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, left: int | None = None) -> str:
    """A markdown (GFM) table, ``|`` in cells escaped; ``left``: the first ``left`` columns left-aligned and the
    others right-aligned (default: no alignment marks). No trailing newline."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    marks = ["---"] * len(header) if left is None else ["---"] * left + ["---:"] * (len(header) - left)
    return "\n".join([line(header), "|" + "|".join(marks) + "|", *(line(r) for r in rows)])


def json_text(data: Any) -> str:
    """The one JSON encoder of cotviz (files, ``--json`` on stdout, every command): ``data`` made JSON-safe by
    :func:`json_ready` (non-finite floats -> null), indented, UTF-8 characters kept, a final newline."""
    return json.dumps(json_ready(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_text(path: Path, text: str) -> None:
    """``text`` as UTF-8, atomically (a reader sees the old file or the whole new one, never a part)."""
    payload = text.encode("utf-8")

    def write(fh: IO[bytes]) -> None:
        fh.write(payload)

    _atomic_write(path, write)


def write_json(path: Path, data: Any) -> None:
    """``data`` as :func:`json_text` writes it, atomically."""
    write_text(path, json_text(data))
