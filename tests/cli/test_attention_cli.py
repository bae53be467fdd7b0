"""``cotviz attention`` through ``typer.testing.CliRunner``: alignment, outputs, batches and every error path.

The alignment tests use hand-set weights whose response is known: the stem averages brightness, the
first block's 1x1 conv and its CoT static-context (key_embed) conv average over channels and space, every
BatchNorm is the identity. On a black image the static context, the dynamic context and the fused output
of stage1.block1 are then exactly zero wherever no bright pixel is within reach, so their energy maps peak
on a bright patch -- and must peak over the same ORIGINAL pixels, through resize, centre crop and the
tiling of cells (catching transposes, flips and off-by-crop errors).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cotviz.cli.app import app

REPO = Path(__file__).resolve().parents[2]
COFFEE = REPO / "examples" / "coffee.png"

W, H = 192, 128  # landscape test image
PATCH = (120, 10, 148, 38)  # bright patch (x0, y0, x1, y1): top right of the part that survives the crop
DECOY = (0, 0, 30, 30)  # dimmer patch in the left strip that the centre crop removes


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[PATCH[1]:PATCH[3], PATCH[0]:PATCH[2]] = 255
    img[DECOY[1]:DECOY[3], DECOY[0]:DECOY[2]] = 160
    Image.fromarray(img).save(d / "corner.png")
    batch = d / "batch"
    batch.mkdir()
    coffee = Image.open(COFFEE).convert("RGB").resize((150, 100))
    coffee.save(batch / "coffee.png")
    coffee.save(batch / "coffee.jpg", quality=90)
    good = (batch / "coffee.png").read_bytes()
    (batch / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    (d / "notes.png").write_text("this is not an image\n")
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    # a PNG header declaring 10000 x 10000 pixels and no data: refused before decoding
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0)
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                                 + chunk(b"IEND", b""))
    (d / "empty").mkdir()
    (d / "a_file").write_text("x")
    return {"corner": d / "corner.png", "batch": batch, "notes": d / "notes.png", "truncated": d / "truncated.png",
            "bomb": d / "bomb.png", "empty": d / "empty", "a_file": d / "a_file",
            "dir": d}


@pytest.fixture(scope="module")
def handset_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cotnet50 whose stage1.block1 CoT contexts are local averages of the input brightness."""
    from cotviz.models import create_model

    model = create_model("cotnet50", seed=0)
    sd = model.state_dict()
    sd["conv1.weight"].fill_(1.0 / (3 * 49))  # every stem channel: mean brightness over 7x7x3
    sd["layer1.0.conv1.weight"].fill_(1.0 / 64)  # mean over channels
    sd["layer1.0.conv2.key_embed.0.weight"].fill_(1.0 / (16 * 9))  # grouped 3x3 (16 in-channels per group): mean
    for name in ("bn1", "layer1.0.bn1", "layer1.0.conv2.key_embed.1", "layer1.0.conv2.conv1x1.1", "layer1.0.conv2.bn"):
        sd[f"{name}.weight"].fill_(1.0)
        sd[f"{name}.bias"].zero_()
        sd[f"{name}.running_mean"].zero_()
        sd[f"{name}.running_var"].fill_(1.0)
    path = tmp_path_factory.mktemp("weights") / "handset.pt"
    torch.save(sd, path)
    return path


def invoke(runner: CliRunner, args: list[str]) -> Any:
    return runner.invoke(app, ["attention", *args])


def expected_crop_box(size: int = 64, crop_pct: float = 0.875) -> tuple[float, float, float, float]:
    """timm eval transform, computed here independently: shorter side -> floor(S / crop_pct), centre crop."""
    short = math.floor(size / crop_pct)  # 73
    long = int(short * W / H)  # 109
    left, top = round((long - size) / 2), round((short - size) / 2)  # 22, 4 (round half to even)
    return left * W / long, top * H / short, (left + size) * W / long, (top + size) * H / short


def cell_to_original(i: int, j: int, stride: int, box: list[float], size: int) -> tuple[float, float]:
    """Centre of cell (i, j) in original pixels, through the crop box."""
    left, top, right, bottom = box
    u, v = (j + 0.5) * stride, (i + 0.5) * stride
    return left + u * (right - left) / size, top + v * (bottom - top) / size


def in_patch(x: float, y: float, patch: tuple[int, int, int, int], tol: float = 0.0) -> bool:
    return patch[0] - tol <= x <= patch[2] + tol and patch[1] - tol <= y <= patch[3] + tol


def test_alignment_through_resize_crop_and_cells(runner: CliRunner, files: dict[str, Path], handset_weights: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    cx, cy = (PATCH[0] + PATCH[2]) // 2, (PATCH[1] + PATCH[3]) // 2
    r = invoke(runner, [str(files["corner"]), "--stage", "1", "--block", "1", "--size", "64", "--weights",
                        str(handset_weights), "--map", "static_energy", "--map", "dynamic_energy", "--map",
                        "output_energy", "--point", f"{cx},{cy}", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["untrained"] is False and summary["weights"]["sha256"]
    (image,) = summary["images"]
    meta = json.loads(Path(image["json"]).read_text())
    box = meta["crop_box"]
    assert box == pytest.approx(expected_crop_box())
    assert meta["model"]["weights"]["sha256"] == summary["weights"]["sha256"]
    assert Path(image["figure"]).name == "corner_cotnet50_stage1.png" and Path(image["figure"]).stat().st_size > 0
    stride = meta["geometry"]["blocks"]["stage1.block1"]["feature_stride"]
    assert stride == 4
    with np.load(image["npz"]) as npz:
        assert npz["input"].shape == (64, 64, 3)
        for name in ("static_energy", "dynamic_energy", "output_energy"):
            m = npz[f"stage1.block1/{name}"]
            assert m.shape == (16, 16)
            i, j = np.unravel_index(np.argmax(m), m.shape)
            x, y = cell_to_original(int(i), int(j), stride, box, 64)
            assert in_patch(x, y, PATCH), (name, (i, j), (x, y))
            # everything that lights up is near the patch: top-right cells only
            lit_i, lit_j = np.nonzero(m > 0.05 * m.max())
            assert lit_i.max() < 8 and lit_j.min() >= 8, name
            stats = meta["statistics"][f"stage1.block1/{name}"]
            assert stats["max"] == pytest.approx(float(m.max()), rel=1e-6)
        kernels = npz["stage1.block1/kernels"]
        assert kernels.shape == (8, 3, 3)  # 64 channels / 8 = 8 heads, 3x3 windows
        rollout = npz["stage1/rollout"]
    # the point at the patch centre falls in the argmax neighbourhood, and the rollout surrounds it
    pi, pj = meta["point"]["cells"]["stage1.block1"]
    m = np.load(image["npz"])["stage1.block1/static_energy"]
    assert m[pi, pj] > 0.5 * m.max()
    ri, rj = np.unravel_index(np.argmax(rollout), rollout.shape)
    assert abs(ri - pi) <= 1 and abs(rj - pj) <= 1


def test_alignment_without_crop_on_a_rectangular_box(runner: CliRunner, files: dict[str, Path],
                                                     handset_weights: Path, tmp_path: Path) -> None:
    r = invoke(runner, [str(files["corner"]), "--stage", "1", "--block", "1", "--size", "64", "--no-crop",
                        "--weights", str(handset_weights), "--map", "static_energy", "--out", str(tmp_path),
                        "--json"])
    assert r.exit_code == 0, r.output
    (image,) = json.loads(r.stdout)["images"]
    box = image["crop_box"]
    assert box == pytest.approx([0.0, 0.0, W, H])  # the whole landscape image, 3 x 2 original px per input px
    m = np.load(image["npz"])["stage1.block1/static_energy"]
    i, j = np.unravel_index(np.argmax(m), m.shape)
    assert in_patch(*cell_to_original(int(i), int(j), 4, box, 64), PATCH)
    # the decoy is inside this view now: lit, but dimmer than the patch
    di, dj = np.unravel_index(np.argmax(m[:8, :8]), (8, 8))
    assert in_patch(*cell_to_original(int(di), int(dj), 4, box, 64), DECOY, tol=6)
    assert 0 < m[:8, :8].max() < m.max()


def test_batch_with_a_bad_file_same_stems_gradcam_and_json(runner: CliRunner, files: dict[str, Path],
                                                           tmp_path: Path) -> None:
    r = invoke(runner, [str(files["batch"]), "--stage", "2", "--size", "64", "--batch-size", "2", "--gradcam",
                        "--map", "attention_energy", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 1, r.output  # something failed ...
    summary = json.loads(r.stdout)  # ... but stdout is still the JSON summary
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0] and "truncated" in errors[0]
    assert any("UNTRAINED" in ln for ln in r.stderr.splitlines())
    assert "Traceback" not in r.output
    assert [f["input"] for f in summary["failed"]] == [str(files["batch"] / "broken.png")]
    figures = sorted(Path(i["figure"]).name for i in summary["images"])
    assert figures == ["coffee-jpg_cotnet50_stage2.png", "coffee-png_cotnet50_stage2.png"]
    for item in summary["images"]:
        meta = json.loads(Path(item["json"]).read_text())
        assert meta["model"]["untrained"] is True and meta["model"]["zero_init_last_bn"] is False
        assert meta["blocks"] == [f"stage2.block{b}" for b in range(1, 5)]
        assert meta["gradcam"]["target"] == meta["prediction"]["class"]
        with np.load(item["npz"]) as npz:
            assert npz["stage2/gradcam"].shape == (8, 8) and npz["stage2/gradcam_upsampled"].shape == (64, 64)
            assert npz["stage2.block1/attention_energy"].shape == (8, 8)  # pooled before the CoT layer
            assert npz["stage2.block2/attention_energy"].shape == (8, 8)


def test_same_command_twice_gives_identical_outputs_pdf_per_panel_head(runner: CliRunner, tmp_path: Path) -> None:
    outs = []
    for run in ("a", "b"):
        args = [str(COFFEE), "--stage", "4", "--block", "2", "--head", "3", "--size", "64", "--scale", "per-panel",
                "--format", "pdf", "--threads", "2", "--out", str(tmp_path / run), "--json"]
        r = invoke(runner, args)
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert summary["threads"] == 2
        (item,) = summary["images"]
        outs.append(item)
    assert Path(outs[0]["figure"]).suffix == ".pdf"
    assert Path(outs[0]["figure"]).read_bytes() == Path(outs[1]["figure"]).read_bytes()
    a, b = np.load(outs[0]["npz"]), np.load(outs[1]["npz"])
    assert a.files == b.files and "stage4.block2/attention_entropy" in a.files
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
    meta = json.loads(Path(outs[0]["json"]).read_text())
    assert meta["head"] == 3 and meta["blocks"] == ["stage4.block2"] and meta["scale"] == "per-panel"


def test_num_classes_loads_a_checkpoint_fine_tuned_on_another_label_set(runner: CliRunner, handset_weights: Path,
                                                                         tmp_path: Path) -> None:
    """The classes error names --num-classes; with it the same checkpoint loads and predicts among 10 classes."""
    sd = torch.load(handset_weights, weights_only=True)
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][:10].clone(), sd["fc.bias"][:10].clone()
    ten = tmp_path / "ten.pt"
    torch.save(sd, ten)
    args = [str(COFFEE), "--stage", "1", "--size", "64", "--weights", str(ten), "--json"]
    r = invoke(runner, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 1 and "--num-classes 10" in r.stderr and "Traceback" not in r.output
    r = invoke(runner, [*args, "--num-classes", "10", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.stdout)["images"][0]["prediction"]["class"] < 10
    r = invoke(runner, [*args, "--num-classes", "0", "--out", str(tmp_path / "c")])
    assert r.exit_code != 0 and "--num-classes must be at least 1" in r.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["{missing}"], 1, "no such file"),
    (["{notes}"], 1, "not an image"),
    (["{truncated}"], 1, "truncated image file"),
    (["{bomb}"], 1, "decompression"),
    (["{empty}"], 1, "no image files in directory"),
    (["{coffee}", "--out", "{a_file}/sub"], 1, "cannot create output directory"),
    (["{coffee}", "--out", "{a_file}"], 1, "is an existing file"),
    (["{coffee}", "--point", "3;4"], 2, "--point must be X,Y"),
    (["{coffee}", "--size", "8"], 2, "--size must be at least 32"),
    (["{coffee}", "--model", "cotnet5000"], 1, "unknown model 'cotnet5000'"),
    (["{coffee}", "--device", "cuda"], 2, "CUDA is not available"),
    (["{coffee}", "--target", "1000"], 2, "--target 1000 out of range: cotnet50 has classes 0..999"),
    (["{coffee}", "--threads", "0"], 2, "--threads must be between 1 and"),
        (["{coffee}", "--threads", "100000"], 2, "(the CPUs this process may use), got 100000"),
    (["{truncated}", "--stage", "5"], 2, "stage 5 out of range: cotnet50 has stages 1..4"),
    (["{truncated}", "--block", "7"], 2, "block 7 out of range: stage 3 of cotnet50 has blocks 1..6"),
    (["{truncated}", "--head", "32"], 2, "head 32 out of range: stage 3 of cotnet50 has heads 0..31"),
    (["{coffee}", "--stage", "1", "--model", "se_cotnetd_50"], 2, "stage 1 of se_cotnetd_50 has no CoT layers"),
    (["{coffee}", "--model", "cotnext50_2x48d", "--weights", "{handset}"], 1, "it looks like cotnet50"),
    (["{coffee}", "--weights", "{empty}"], 1, "directory"),
    (["{coffee}", "--size", "64", "--point", "600,10"], 1, "--point 600,10 lies outside coffee.png (600x400 px"),
    (["{coffee}", "--size", "64", "--point", "5,200"], 1, "outside the centre crop"),
])
def test_errors_are_one_line_without_traceback(runner: CliRunner, files: dict[str, Path], handset_weights: Path,
                                               args: list[str], code: int, message: str) -> None:
    paths = {k: str(v) for k, v in files.items()} | {"coffee": str(COFFEE), "missing": str(files["dir"] / "nope.png"),
                                                     "handset": str(handset_weights)}
    r = invoke(runner, [a.format(**paths) for a in args] + ["--out", str(files["dir"] / "out")]
               if "--out" not in args else [a.format(**paths) for a in args])
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.output and r.stdout == ""


def test_debug_shows_the_exception(runner: CliRunner, files: dict[str, Path]) -> None:
    from cotviz.errors import InvalidArgumentError

    r = runner.invoke(app, ["--debug", "attention", str(COFFEE), "--stage", "9", "--out", str(files["dir"] / "o")])
    assert isinstance(r.exception, InvalidArgumentError) and "stage 9 out of range" in str(r.exception)


def test_plain_files_are_listed_without_pillows_extension_table(files: dict[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Files named directly are taken as they are (first of several entries for one file kept); only a
    directory or a pattern needs the extension table (which imports every Pillow plugin)."""
    import cotviz.io.images as images
    from cotviz.io import expand_inputs

    batch = files["batch"]
    entries = [str(batch / "coffee.png"), str(batch / "coffee.jpg"), str(batch / "." / "coffee.png"),
               str(files["notes"])]
    expected = expand_inputs(entries)
    built = []
    table = images.image_extensions
    monkeypatch.setattr(images, "image_extensions", lambda: built.append(1) or table())
    paths, problems = expand_inputs(entries)
    assert (paths, problems) == (expected.paths, expected.problems) and not built
    assert list(paths) == [batch / "coffee.png", batch / "coffee.jpg", files["notes"]] and not problems
    mixed = [str(batch), str(files["dir"] / "missing.png"), str(batch / "*.jpg")]
    paths, problems = expand_inputs(mixed)
    assert len(built) == 1  # one table for the directory and the pattern
    assert batch / "coffee.png" in paths and [p.item for p in problems] == [mixed[1]]


def test_a_run_without_gradcam_imports_neither_captum_nor_pyplot(tmp_path: Path, fresh_python: Any) -> None:
    """captum is imported only for --gradcam; figures never touch pyplot's global state; --help needs no torch."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cotviz.cli.app import app\n"
        "r = CliRunner().invoke(app, ['attention', '--help'])\n"
        "assert r.exit_code == 0 and 'torch' not in sys.modules, 'attention --help imported torch'\n"
        f"r = CliRunner().invoke(app, ['attention', {str(COFFEE)!r}, '--stage', '1', '--size', '64', "
        f"'--out', {str(tmp_path)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'captum' not in sys.modules, 'captum imported without --gradcam'\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    fresh_python(code)
    assert (tmp_path / "coffee_cotnet50_stage1.png").stat().st_size > 0


def test_console_script_defers_gc_until_the_imports_are_in(tmp_path: Path, fresh_python: Any) -> None:
    """main() turns the collector off for start-up; the command freezes the imported objects and turns it
    back on before its real work, and collects between images. In-process use leaves the collector alone."""
    code = (
        "import gc, sys\n"
        "import cotviz.cli._common as common\n"
        "seen = {}\n"
        "settle = common.settle_gc\n"
        "def spy():\n"
        "    seen['before'] = (gc.isenabled(), 'torch' in sys.modules, 'matplotlib.figure' in sys.modules)\n"
        "    settle()\n"
        "    seen['after'] = (gc.isenabled(), gc.get_freeze_count() > 100_000)\n"
        "import cotviz.cli.attention as att\n"
        "att.settle_gc = spy\n"
        "from cotviz.cli.app import main\n"
        f"sys.argv = ['cotviz', 'attention', {str(COFFEE)!r}, {str(COFFEE)!r}, '--stage', '1', '--size', '64', "
        f"'--out', {str(tmp_path)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "assert seen['before'] == (False, True, True), seen\n"
        "assert seen['after'] == (True, True), seen\n"
        "assert gc.isenabled()\n"
    )
    fresh_python(code)
    assert (tmp_path / "coffee_cotnet50_stage1.png").stat().st_size > 0


def test_settle_gc_does_nothing_unless_deferred() -> None:
    import gc

    from cotviz.cli._common import settle_gc

    frozen = gc.get_freeze_count()
    settle_gc()  # CliRunner / library use: no defer_gc() ran
    assert gc.isenabled() and gc.get_freeze_count() == frozen
