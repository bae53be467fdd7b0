"""``examples/explain_api.py`` runs as documented (a fresh interpreter, the untrained demo network, 96 px)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_notebook_example_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "explain_api.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{REPO / 'examples' / 'coffee.png'}: top-5 classes [")
    assert lines[1].startswith("stage3.block6: attention entropy 6x6 cells of 16 px")
    assert lines[2].startswith("point (290, 140): cell (2, 2) of stage3.block6; head 0 kernel")
    assert lines[3].startswith("rollout from stage3.block6: mass kept ")
    assert lines[4].startswith("Grad-CAM of class ")
    assert lines[5] == (f"saved coffee_cotnet50_stage3.png, coffee_cotnet50_stage3.npz, coffee_cotnet50_stage3.json "
                        f"in {tmp_path}")
    gallery = sorted(p.name for p in (REPO / "examples" / "gallery").glob("*.png"))
    assert lines[6].startswith("  coffee.png: class ")
    for line, name in zip(lines[7:], gallery, strict=False):
        assert line.startswith(f"  {name}: class "), line
    missing = REPO / "examples" / "missing.jpg"
    assert lines[7 + len(gallery)] == f"  {missing}: error: no such file: {missing}"
    assert len(lines) == 8 + len(gallery)
    assert "UntrainedModelWarning" in proc.stderr  # the demo network says what it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coffee_cotnet50_stage3.json", "coffee_cotnet50_stage3.npz",
                                                          "coffee_cotnet50_stage3.png"]
