"""``cotviz attention`` through ``typer.testing.CliRunner``: parsing, exit codes, messages, and one end-to-end run
per feature (batch with a bad file + Grad-CAM + ``--json``, a point without the crop, formats and determinism,
checkpoints and ``--num-classes``, non-finite maps), plus fresh-interpreter checks of imports and GC.

What the command computes is tested on the library (tests/explain/: hand-set networks, alignment through the
crop, every selection message, batching, the JSON schema, the figure and files); here the shell around it.
"""

from __future__ import annotations

import json
import subprocess
import sys
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


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    batch = d / "batch"
    batch.mkdir()
    coffee = Image.open(COFFEE).convert("RGB").resize((150, 100))
    coffee.save(batch / "coffee.png")
    coffee.save(batch / "coffee.jpg", quality=90)
    good = (batch / "coffee.png").read_bytes()
    (batch / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "empty").mkdir()
    (d / "a_file").write_text("x")
    return {"batch": batch, "truncated": d / "truncated.png", "empty": d / "empty", "a_file": d / "a_file", "dir": d}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """cotnet50 (seed 0) as checkpoints: ``ten`` (the classifier cut to 10 classes) and ``overflow`` (the same with
    one negative BatchNorm variance in stage1.block1's CoT layer: sqrt < 0 = NaN)."""
    from cotviz.models import create_model

    d = tmp_path_factory.mktemp("weights")
    sd = create_model("cotnet50", seed=0).state_dict()
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][:10].clone(), sd["fc.bias"][:10].clone()
    torch.save(sd, d / "ten.pt")
    sd["layer1.0.conv2.bn.running_var"] = sd["layer1.0.conv2.bn.running_var"].clone()
    sd["layer1.0.conv2.bn.running_var"][0] = -1.0
    torch.save(sd, d / "overflow.pt")
    sd["layer1.0.conv2.bn.running_var"][0] = 1.0
    sd["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"].clone()
    sd["layer1.0.conv1.weight"][0, 0] = float("nan")
    torch.save(sd, d / "nan.pt")
    return {"ten": d / "ten.pt", "overflow": d / "overflow.pt", "nan": d / "nan.pt"}


def invoke(runner: CliRunner, args: list[str]) -> Any:
    return runner.invoke(app, ["attention", *args])


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]


# ------------------------------------------------------------------------------------ end to end


def test_batch_with_a_bad_file_same_stems_gradcam_and_json(runner: CliRunner, files: dict[str, Path],
                                                           tmp_path: Path) -> None:
    r = invoke(runner, [str(files["batch"]), "--stage", "2", "--size", "64", "--batch-size", "2", "--gradcam",
                        "--map", "attention_energy", "--workers", "2", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 1, r.output  # something failed ...
    summary = json.loads(r.stdout)  # ... but stdout is still the JSON summary
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "broken.png" in errors[0] and "truncated" in errors[0]
    assert any("UNTRAINED" in ln for ln in r.stderr.splitlines())
    assert "Traceback" not in r.output
    assert summary["untrained"] is True and summary["weights"] is None and summary["maps"] == ["attention_energy"]
    assert [f["input"] for f in summary["failed"]] == [str(files["batch"] / "broken.png")]
    figures = sorted(Path(i["figure"]).name for i in summary["images"])
    assert figures == ["coffee-jpg_cotnet50_stage2.png", "coffee-png_cotnet50_stage2.png"]
    for item in summary["images"]:
        meta = json.loads(Path(item["json"]).read_text())
        assert meta["model"]["untrained"] is True and meta["model"]["zero_init_last_bn"] is False
        assert meta["blocks"] == [f"stage2.block{b}" for b in range(1, 5)]
        assert meta["gradcam"]["target"] == meta["prediction"]["class"] == item["prediction"]["class"]
        assert item["statistics"] == meta["statistics"] and item["nonfinite"] == []
        with np.load(item["npz"]) as npz:
            assert npz["stage2/gradcam"].shape == (8, 8) and npz["stage2/gradcam_upsampled"].shape == (64, 64)
            assert npz["stage2.block1/attention_energy"].shape == (8, 8)  # pooled before the CoT layer
            assert npz["stage2.block2/attention_energy"].shape == (8, 8)


def test_a_point_without_the_crop_as_svg(runner: CliRunner, tmp_path: Path) -> None:
    r = invoke(runner, [str(COFFEE), "--stage", "1", "--block", "2", "--size", "64", "--no-crop", "--point",
                        "5,200", "--format", "svg", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    (item,) = json.loads(r.stdout)["images"]
    assert Path(item["figure"]) == tmp_path / "coffee_cotnet50_stage1.svg"  # outside the centre crop: fine here
    assert Path(item["figure"]).read_bytes().startswith(b"<?xml")
    assert item["crop_box"] == pytest.approx([0, 0, 600, 400], abs=2)  # the whole image (up to a reduced decode's edge)
    meta = json.loads(Path(item["json"]).read_text())
    assert meta["preprocessing"]["crop"] is False and meta["blocks"] == ["stage1.block2"]
    assert meta["point"]["xy_original"] == [5, 200]
    box = item["crop_box"]
    u, v = meta["point"]["uv_model_input"]
    assert (u, v) == pytest.approx((5.5 * 64 / box[2], 200.5 * 64 / box[3]))  # pixel centre through the box
    assert meta["point"]["cells"] == {"stage1.block1": [int(v // 4), 0], "stage1.block2": [int(v // 4), 0]}
    with np.load(item["npz"]) as npz:
        assert npz["stage1.block2/kernels"].shape == (8, 3, 3) and "stage1.block1/kernels" not in npz.files
        assert npz["stage1/rollout"].shape == (16, 16)


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


def test_num_classes_loads_a_checkpoint_fine_tuned_on_another_label_set(runner: CliRunner,
                                                                         checkpoints: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """The classes error names --num-classes; with it the same checkpoint loads and predicts among 10 classes,
    and the summary and the JSON name the checkpoint by its hash."""
    args = [str(COFFEE), "--stage", "1", "--size", "64", "--weights", str(checkpoints["ten"]), "--json"]
    r = invoke(runner, [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 1 and "--num-classes 10" in r.stderr and "Traceback" not in r.output
    r = invoke(runner, [*args, "--num-classes", "10", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["untrained"] is False and summary["weights"]["path"] == str(checkpoints["ten"])
    (item,) = summary["images"]
    assert 0 <= item["prediction"]["class"] < 10
    meta = json.loads(Path(item["json"]).read_text())
    assert meta["model"]["weights"]["sha256"] == summary["weights"]["sha256"] and meta["model"]["untrained"] is False
    assert not any("UNTRAINED" in ln for ln in r.stderr.splitlines())
    r = invoke(runner, [*args, "--num-classes", "0", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--num-classes must be at least 1" in r.stderr


def test_nonfinite_maps_are_written_and_reported_in_one_line_with_exit_1(runner: CliRunner,
                                                                         checkpoints: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    r = invoke(runner, [str(COFFEE), "--stage", "1", "--block", "1", "--size", "64", "--weights",
                        str(checkpoints["overflow"]), "--num-classes", "10", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 1, r.output
    (line,) = error_lines(r.stderr)
    assert line.startswith(f"error: {COFFEE}: non-finite values (NaN/Inf) in stage1.block1/dynamic_energy")
    assert line.endswith("prediction; the weights or the input overflow")
    (item,) = json.loads(r.stdout)["images"]
    assert "stage1.block1/dynamic_energy" in item["nonfinite"] and Path(item["figure"]).stat().st_size > 0
    meta = json.loads(Path(item["json"]).read_text())
    assert meta["nonfinite"] == item["nonfinite"] and meta["statistics"]["stage1.block1/dynamic_energy"]["max"] is None


# ------------------------------------------------------------------------------ errors and parsing


@pytest.mark.parametrize(("args", "code", "message"), [
    (["{missing}"], 1, "no such file"),
    (["{empty}"], 1, "no image files in directory"),
    (["{coffee}", "--out", "{a_file}/sub"], 1, "cannot create output directory"),
    (["{coffee}", "--out", "{a_file}"], 1, "is an existing file"),
    (["{coffee}", "--model", "cotnet5000"], 1, "unknown model 'cotnet5000'"),
    (["{coffee}", "--device", "cuda"], 2, "CUDA is not available"),
    (["{coffee}", "--threads", "0"], 2, "--threads must be between 1 and"),
    (["{coffee}", "--threads", "100000"], 2, "(the CPUs this process may use), got 100000"),
    (["{coffee}", "--batch-size", "0"], 2, "--batch-size must be at least 1, got 0"),
    (["{coffee}", "--dpi", "5"], 2, "--dpi must be between 10 and 1200, got 5"),
    (["{coffee}", "--workers", "-1"], 2, "--workers must be between 0 and"),
    # the request is checked before any image is decoded (the truncated file is never read); every selection
    # message: tests/explain/test_selection.py; every unreadable kind of file: tests/explain/test_inputs.py
    (["{truncated}", "--stage", "5"], 2, "stage 5 out of range: cotnet50 has stages 1..4"),
    (["{coffee}", "--model", "cotnext50_2x48d", "--weights", "{ten}"], 1, "it looks like cotnet50"),
    # a point outside one image is that image's failure (exit 1), not a usage error
    (["{coffee}", "--size", "64", "--point", "600,10"], 1, "--point 600,10 lies outside coffee.png (600x400 px"),
])
def test_errors_are_one_line_without_traceback(runner: CliRunner, files: dict[str, Path],
                                               checkpoints: dict[str, Path], args: list[str], code: int,
                                               message: str) -> None:
    paths = {k: str(v) for k, v in files.items()} | {"coffee": str(COFFEE), "missing": str(files["dir"] / "nope.png"),
                                                     "ten": str(checkpoints["ten"])}
    argv = [a.format(**paths) for a in args]
    r = invoke(runner, argv if "--out" in args else [*argv, "--out", str(files["dir"] / "out")])
    assert r.exit_code == code, r.output
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.output and r.stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    (["--map", "entropy"], "--map"),
    (["--format", "gif"], "--format"),
    (["--scale", "log"], "--scale"),
    (["--stage", "three"], "--stage"),
    ([], "Missing argument"),
])
def test_options_that_do_not_parse_are_usage_errors(runner: CliRunner, args: list[str], message: str) -> None:
    r = invoke(runner, [str(COFFEE), *args] if args else [])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_map_and_format_choices_come_from_the_library() -> None:
    from cotviz.analysis.catalog import MAP_INFO
    from cotviz.cli._options import MapName
    from cotviz.formats import FigureFormat

    assert [m.value for m in MapName] == list(MAP_INFO)
    assert [f.value for f in FigureFormat] == ["png", "svg", "pdf"]


def test_debug_shows_the_exception(runner: CliRunner, files: dict[str, Path]) -> None:
    from cotviz.errors import InvalidArgumentError

    r = runner.invoke(app, ["--debug", "attention", str(COFFEE), "--stage", "9", "--out", str(files["dir"] / "o")])
    assert isinstance(r.exception, InvalidArgumentError) and "stage 9 out of range" in str(r.exception)


# --------------------------------------------------------------------------- fresh interpreters


@pytest.fixture(scope="module")
def console_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fresh interpreter (clean ``sys.modules`` and GC state) that runs ``cotviz attention --help`` through
    CliRunner, then ``cotviz attention`` on two images through the console script's ``main()`` (no
    ``--gradcam``), with a spy on ``settle_gc``; what it saw, as JSON, plus the output folder. One child for the
    tests below: each child pays the imports and a full-size cotnet50 build (3-6 s)."""
    out = tmp_path_factory.mktemp("console")
    code = (
        "import gc, json, sys\n"
        "from typer.testing import CliRunner\n"
        "from cotviz.cli.app import app, main\n"
        "r = CliRunner().invoke(app, ['attention', '--help'])\n"
        "seen = {'help': (r.exit_code, 'torch' in sys.modules)}\n"
        "import cotviz.cli._common as common\n"
        "settle = common.settle_gc\n"
        "def spy():\n"
        "    seen['before'] = (gc.isenabled(), 'torch' in sys.modules, 'matplotlib.figure' in sys.modules)\n"
        "    settle()\n"
        "    seen['after'] = (gc.isenabled(), gc.get_freeze_count() > 100_000)\n"
        "import cotviz.cli.attention as att\n"
        "att.settle_gc = spy\n"
        f"sys.argv = ['cotviz', 'attention', {str(COFFEE)!r}, {str(COFFEE)!r}, '--stage', '1', '--size', '64', "
        f"'--out', {str(out)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    seen['exit'] = e.code\n"
        "seen['end'] = {'gc': gc.isenabled(), 'captum': 'captum' in sys.modules,\n"
        "               'pyplot': 'matplotlib.pyplot' in sys.modules}\n"
        "print(json.dumps(seen))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return {**seen, "out": out, "stderr": proc.stderr}


def test_a_run_without_gradcam_imports_neither_captum_nor_pyplot(console_run: dict[str, Any]) -> None:
    """captum is imported only for --gradcam; figures never touch pyplot's global state; --help needs no torch."""
    assert console_run["help"] == [0, False], "attention --help failed or imported torch"
    assert console_run.get("exit") in (None, 0), console_run["stderr"][-2000:]
    assert not console_run["end"]["captum"], "captum imported without --gradcam"
    assert not console_run["end"]["pyplot"], "pyplot imported"
    assert (console_run["out"] / "coffee_cotnet50_stage1.png").stat().st_size > 0


def test_console_script_defers_gc_until_the_imports_are_in(console_run: dict[str, Any]) -> None:
    """main() turns the collector off for start-up; the command freezes the imported objects and turns it
    back on before its real work, and collects between images. In-process use leaves the collector alone."""
    assert console_run.get("exit") in (None, 0), console_run["stderr"][-2000:]
    assert console_run["before"] == [False, True, True], console_run
    assert console_run["after"] == [True, True], console_run
    assert console_run["end"]["gc"]


def test_settle_gc_does_nothing_unless_deferred() -> None:
    import gc

    from cotviz.cli._common import settle_gc

    frozen = gc.get_freeze_count()
    settle_gc()  # CliRunner / library use: no defer_gc() ran
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_nan_weights_are_refused_unless_allowed(runner: CliRunner, checkpoints: dict[str, Path],
                                                tmp_path: Path) -> None:
    args = [str(COFFEE), "--stage", "1", "--block", "1", "--size", "64", "--weights", str(checkpoints["nan"]),
            "--num-classes", "10", "--out", str(tmp_path)]
    r = invoke(runner, args)
    assert r.exit_code == 1, r.output
    (line,) = error_lines(r.stderr)
    assert "non-finite values (NaN/Inf)" in line and "layer1.0.conv1.weight" in line
    assert not list(tmp_path.glob("*.png"))  # refused before anything ran
    r = invoke(runner, [*args, "--allow-nonfinite"])
    assert r.exit_code == 1, r.output  # loaded, and the NaN reaches the maps: reported, exit 1
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: {COFFEE}: non-finite values (NaN/Inf) in stage1.block1/")
