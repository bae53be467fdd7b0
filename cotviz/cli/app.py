"""The ``cotviz`` Typer application. Commands live in one module each and register here."""

from __future__ import annotations

from typing import Annotated

import typer

from cotviz._version import __version__
from cotviz.cli import attention as attention_cmd
from cotviz.cli import compare as compare_cmd
from cotviz.cli import explore as explore_cmd
from cotviz.cli import models as models_cmd
from cotviz.cli import profile as profile_cmd
from cotviz.cli import sanity as sanity_cmd
from cotviz.cli import stats as stats_cmd
from cotviz.cli._common import DEBUG, FLAG, Command, Group, defer_gc

app = typer.Typer(
    name="cotviz",
    help="See inside Contextual Transformer Networks (CoTNet): models, attention maps, comparisons, profiles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
)


def _version(value: bool) -> None:
    if value:
        print(f"cotviz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar=FLAG,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", metavar=FLAG, help="Show full tracebacks on errors.")] = False,
) -> None:
    """cotviz: analyse and visualise CoT attention."""
    DEBUG["enabled"] = debug


app.command("models", cls=Command)(models_cmd.models)
app.command("profile", cls=Command)(profile_cmd.profile)
app.command("attention", cls=Command)(attention_cmd.attention)
app.command("compare", cls=Command)(compare_cmd.compare)
app.command("sanity", cls=Command)(sanity_cmd.sanity)
app.command("stats", cls=Command)(stats_cmd.stats)
app.command("explore", cls=Command)(explore_cmd.explore)


def main() -> None:
    """Console-script entry point."""
    defer_gc()
    try:
        app()
    except BrokenPipeError:  # e.g. `cotviz models --json | head`: stop quietly (Python docs' recipe)
        import os
        import sys

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)
