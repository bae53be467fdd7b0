"""``cotviz models``, ``--version``, ``--help`` through ``typer.testing.CliRunner`` (fastapi-cli style).

Also checks the CLI's promise that ``--help`` does not import torch (command modules import it lazily).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from cotviz import __version__
from cotviz.cli.app import app
from cotviz.models import list_models, model_entry

#: Wide terminal, so rich never truncates a model name in the table.
WIDE = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def models_json() -> list[dict[str, Any]]:
    """``cotviz models --json`` parsed."""
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def test_models_table_lists_every_model(runner: CliRunner) -> None:
    result = runner.invoke(app, ["models"], env=WIDE)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in list_models():
        assert any(f" {name} " in line for line in lines), f"{name} missing from the table"
    for alias in ("cotnext50", "se_cotnetd152"):
        assert alias in result.stdout


def test_models_json_fields(models_json: list[dict[str, Any]]) -> None:
    assert [r["name"] for r in models_json] == list_models()
    for row in models_json:
        assert {"name", "aliases", "params", "input_size", "crop_pct", "cot_layers"} <= set(row)
        entry = model_entry(row["name"])
        assert row["aliases"] == list(entry.aliases)
        assert row["input_size"] == entry.pretrained_cfg.image_size
        assert row["crop_pct"] == entry.pretrained_cfg.crop_pct
        assert isinstance(row["params"], int) and row["params"] > 0


def test_models_json_matches_the_official_manifest(models_json: list[dict[str, Any]],
                                                   manifest: dict[str, Any]) -> None:
    rows = {r["name"]: r for r in models_json}
    assert set(manifest) <= set(rows)
    for name, ref in manifest.items():
        row = rows[name]
        assert row["params"] == ref["params"], name
        assert row["cot_layers"] == len(ref["cot_layers"]), name
        assert row["input_size"] == ref["default_cfg"]["input_size"][-1], name
        assert row["crop_pct"] == ref["default_cfg"]["crop_pct"], name


def test_models_pattern_filter(runner: CliRunner) -> None:
    result = runner.invoke(app, ["models", "cotnext*", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)] == ["cotnext50_2x48d", "cotnext101_2x48d"]
    table = runner.invoke(app, ["models", "se_cotnetd_152*"], env=WIDE)
    assert table.exit_code == 0, table.output
    assert "se_cotnetd_152_L" in table.stdout and "cotnet50" not in table.stdout


def test_no_match_says_so(runner: CliRunner) -> None:
    result = runner.invoke(app, ["models", "xyz*", "--json"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == "error: no registered model matches 'xyz*' (`cotviz models` lists them all)\n"


def test_models_builds_nothing(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The figures are recorded (tests/models/test_meta.py checks them against a meta build): listing is instant."""
    import cotviz.models.meta as meta

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("cotviz models built a model")

    monkeypatch.setattr(meta, "build_meta_model", no_build)
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == len(list_models())


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cotviz {__version__}"


def test_help(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "models" in result.stdout
    sub = runner.invoke(app, ["models", "--help"], env={"COLUMNS": "80"})
    assert sub.exit_code == 0
    json_row = next(line for line in sub.stdout.splitlines() if "--json" in line)
    assert "<bool>" not in json_row  # a flag takes no value


def test_importing_the_cli_does_not_import_torch(fresh_python: Any) -> None:
    fresh_python("import cotviz.cli.app, sys; assert 'torch' not in sys.modules")


def test_help_does_not_import_torch(fresh_python: Any) -> None:
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from cotviz.cli.app import app\n"
            "result = CliRunner().invoke(app, ['--help'])\n"
            "assert result.exit_code == 0, result.output\n"
            "assert 'torch' not in sys.modules, 'cotviz --help imported torch'\n")
    fresh_python(code)
