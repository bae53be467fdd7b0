"""Output files: deterministic unique names, writable output directory, atomic and timestamp-free writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from cotviz.errors import OutputError
from cotviz.io.outputs import (
    OutputPaths,
    ensure_out_dir,
    json_ready,
    output_bases,
    save_figure,
    write_json,
    write_npz,
)


def test_output_bases_are_deterministic_and_unique(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    paths = [a / "coffee.png", a / "coffee.jpg", b / "coffee.png", a / "tea cup.webp", a / "x.png"]
    bases = output_bases(paths, "cotnet50", 3)
    assert bases == output_bases(paths, "cotnet50", 3)
    assert len(set(bases)) == len(bases)
    assert bases[1] == "coffee-jpg_cotnet50_stage3"
    assert bases[0].startswith("coffee-png-") and bases[2].startswith("coffee-png-") and bases[0] != bases[2]
    assert bases[3] == "tea-cup_cotnet50_stage3" and bases[4] == "x_cotnet50_stage3"
    assert output_bases([a / "coffee.png"], "cotnet50", 3) == ["coffee_cotnet50_stage3"]
    out = OutputPaths(tmp_path, bases[4], "svg")
    assert out.figure.name == "x_cotnet50_stage3.svg" and out.npz.suffix == ".npz" and out.json.suffix == ".json"


def test_ensure_out_dir(tmp_path: Path) -> None:
    assert ensure_out_dir(tmp_path / "new" / "deeper").is_dir()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="existing file"):
        ensure_out_dir(blocker)
    with pytest.raises(OutputError, match="parent path is a file"):
        ensure_out_dir(blocker / "sub")
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(OutputError, match="not writable"):
            ensure_out_dir(locked)


def test_writes_are_atomic_complete_and_deterministic(tmp_path: Path) -> None:
    from cotviz.viz.overlay import new_figure

    arrays = {"stage3.block2/attention_energy": np.arange(6.0).reshape(2, 3), "input": np.zeros((2, 2, 3), np.uint8)}
    write_npz(tmp_path / "m.npz", arrays)
    with np.load(tmp_path / "m.npz") as got:
        assert sorted(got.files) == sorted(arrays)
        np.testing.assert_array_equal(got["stage3.block2/attention_energy"], arrays["stage3.block2/attention_energy"])
    write_json(tmp_path / "m.json", {"p": Path("/x"), "t": (1, 2), "nan": float("nan"), "np": np.float32(1.5),
                                     "arr": np.arange(2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"p": "/x", "t": [1, 2], "nan": None, "np": 1.5,
                                                              "arr": [0, 1]}
    umask = int(next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("Umask:"))
                .split()[1], 8) if Path("/proc/self/status").exists() else 0o022
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600
    for fmt in ("png", "svg", "pdf"):
        outs = []
        for i in range(2):
            fig = new_figure((2, 2), dpi=50)
            fig.add_subplot().imshow(np.eye(3))
            save_figure(fig, tmp_path / f"f{i}.{fmt}", fmt)
            outs.append((tmp_path / f"f{i}.{fmt}").read_bytes())
        if fmt != "svg":  # matplotlib's SVG ids hash in-memory objects
            assert outs[0] == outs[1], fmt  # no timestamps
        else:
            assert b"<svg" in outs[0] and b"<dc:date>" not in outs[0]
    assert outs[0].startswith(b"%PDF")
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind
    assert json_ready({1: {2}}) == {"1": "{2}"}
