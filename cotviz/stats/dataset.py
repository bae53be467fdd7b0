"""A dataset for ``cotviz stats``: a folder, a class-folder tree, a glob pattern or a list file -> a sorted file list.

* a **directory**: every image file beneath it, recursively (hidden files and folders skipped); an ImageNet-style
  tree ``root/<class>/<image>`` is a directory whose images sit in first-level folders;
* a **glob pattern** (``"data/**/*.jpg"``, quoted): the matching image files;
* a **list file** (any existing file whose extension is not an image format's): one path per line, relative paths
  taken from the list file's folder; blank lines and lines starting with ``#`` are skipped; an entry may also be
  a folder or a pattern;
* an **image file**: itself.

The list is sorted (by path components relative to the root) and de-duplicated, so every rank of a distributed
run sees the same list in the same order. Classes (``by_class=True``): the first-level folder of each image
relative to the root (the directory; the list file's folder; the pattern's fixed prefix); sorted by name.
Entries that yield no image (a missing file named in a list) are kept as :attr:`StatsData.problems` and reported
with the unreadable files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cotviz.errors import ImageError, InvalidArgumentError
from cotviz.io import InputProblem, expand_inputs, image_extensions

__all__ = ["StatsData", "list_dataset"]

_GLOB = frozenset("*?[")
#: A list file larger than this is refused (about 2 million paths).
MAX_LIST_BYTES = 256 * 2**20


@dataclass(frozen=True)
class StatsData:
    """A sorted image list, its classes (with ``by_class``) and the entries that gave no image.

    Attributes:
        items: the image files, sorted.
        root: the folder classes and relative names are taken from.
        kind: ``"directory"``, ``"tree"`` (images in class folders), ``"glob"``, ``"list"``, ``"file"`` or
            ``"paths"`` (a Python list of paths).
        classes: sorted class names (``by_class``), else None; labels: the class index of each item.
        problems: entries that yielded no image.
    """

    items: tuple[Path, ...]
    root: Path
    kind: str
    classes: tuple[str, ...] | None = None
    labels: tuple[int, ...] | None = None
    problems: tuple[InputProblem, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.items)

    def digest(self) -> str:
        """sha256 of the item list (what a checkpoint was made for)."""
        h = hashlib.sha256()
        for p in self.items:
            h.update(os.fsencode(p) + b"\0")
        return h.hexdigest()

    def describe(self) -> dict[str, object]:
        return {"root": str(self.root), "kind": self.kind, "images": len(self.items),
                "classes": None if self.classes is None else len(self.classes), "sha256": self.digest()}


def _prefix(pattern: str) -> Path:
    """The folder part of a glob pattern before its first wildcard."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for p in parts:
        if _GLOB.intersection(p):
            break
        fixed.append(p)
    return Path(*fixed) if fixed else Path(".")


def _read_list(path: Path) -> list[str]:
    try:
        size = path.stat().st_size
        if size > MAX_LIST_BYTES:
            raise InvalidArgumentError(f"list file {path} is {size} bytes; at most {MAX_LIST_BYTES} are read")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ImageError(f"{path} is neither an image nor a list file (one path per line, UTF-8)") from None
    except OSError as err:
        raise ImageError(f"cannot read list file {path}: {err.strerror or err}") from None
    base = path.parent
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = os.path.expanduser(entry)
        out.append(p if os.path.isabs(p) else str(base / p))
    if not out:
        raise ImageError(f"list file {path} names no images (one path per line)")
    return out


def list_dataset(data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 by_class: bool = False) -> StatsData:
    """The sorted image list of ``data`` (see the module docstring).

    Raises:
        ImageError: nothing usable (a missing path, an empty folder, a pattern without matches).
        InvalidArgumentError: ``by_class`` with an image that is not inside a class folder.
    """
    problems: list[InputProblem] = []
    if isinstance(data, (str, os.PathLike)):
        text = os.path.expanduser(os.fspath(data))
        path = Path(text)
        if path.is_dir():
            root, kind = path, "directory"
            expanded = expand_inputs([str(path / "**" / "*")])
            paths = expanded.paths
            if not paths:
                raise ImageError(f"no image files in directory {data} (searched recursively)")
            if any(len(p.relative_to(root).parts) > 1 for p in paths):
                kind = "tree"
        elif path.is_file():
            root = path.parent
            if path.suffix.lower() in image_extensions():
                kind, paths = "file", [path]
            else:
                kind = "list"
                expanded = expand_inputs(_read_list(path))
                paths, problems = expanded.paths, list(expanded.problems)
        elif _GLOB.intersection(text):
            root, kind = _prefix(text), "glob"
            expanded = expand_inputs([text])
            paths = expanded.paths
            if not paths:
                raise ImageError(expanded.problems[0].message)
        else:
            raise ImageError(f"no such file or directory: {data}")
    else:
        expanded = expand_inputs(list(data))
        paths, problems, kind = expanded.paths, list(expanded.problems), "paths"
        root = Path(os.path.commonpath([os.path.abspath(p) for p in paths])) if paths else Path(".")
        if len(paths) == 1:
            root = paths[0].parent
    if not paths:
        first = problems[0].message if problems else "no images"
        raise ImageError(f"{data}: no image to read ({first})")
    keyed: dict[str, tuple[tuple[str, ...], Path]] = {}
    for p in paths:
        try:
            rel = Path(os.path.relpath(os.path.abspath(p), os.path.abspath(root))).parts
        except ValueError:  # another drive (Windows)
            rel = Path(p).parts
        keyed.setdefault(os.path.realpath(p), (rel, p))
    ordered = sorted(keyed.values(), key=lambda rp: (rp[0], str(rp[1])))
    items = tuple(p for _, p in ordered)
    if not by_class:
        return StatsData(items, root, kind, problems=tuple(problems))
    names: list[str] = []
    for rel, p in ordered:
        if len(rel) < 2 or rel[0] == "..":
            raise InvalidArgumentError(f"--by-class groups images by their first-level folder under {root}, but "
                                       f"{p} is not inside a class folder there")
        names.append(rel[0])
    classes = tuple(sorted(set(names)))
    index = {c: i for i, c in enumerate(classes)}
    return StatsData(items, root, kind, classes, tuple(index[n] for n in names), tuple(problems))
