"""Help texts: flags show no value placeholder, choices fit 80 columns without breaking words."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from cotviz.cli.app import app


@pytest.mark.parametrize("command", [[], ["models"], ["profile"], ["attention"], ["compare"], ["sanity"], ["explore"],
                                     ["stats"]])
def test_help_shows_no_bool_placeholder_and_fits_80_columns(command: list[str]) -> None:
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "<list[attention" not in r.stdout  # map choices are listed in the help text, not wrapped mid-word
    flags = re.findall(r"--[a-z-]+", r.stdout)
    assert "--help" in flags
