"""Helpers shared by the commands: error reporting, consoles, output formats."""

from __future__ import annotations

import functools
import gc
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

__all__ = ["DEBUG", "FLAG", "Command", "Group", "console", "err_console", "fail", "handle_errors", "print_json",
           "route_warnings", "write_output"]

F = TypeVar("F", bound=Callable[..., Any])

#: Set by the ``--debug`` global option: show tracebacks instead of one-line errors.
DEBUG = {"enabled": False}
#: ``metavar`` of a boolean flag: nothing (Typer would show ``<bool>``, as if the flag took a value).
FLAG = ""


def _flags_without_placeholder(params: list[Any]) -> None:
    """Typer renders a type for every option, so a flag (``--help`` included) shows ``<bool>`` as if it took a
    value; a flag has no value to show."""
    for p in params:
        if getattr(p, "is_flag", False) and getattr(p, "metavar", "") is None:
            p.metavar = FLAG


class Command(TyperCommand):
    """A command whose help shows flags without a value placeholder."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _flags_without_placeholder(self.get_params(ctx))
        super().format_help(ctx, formatter)


class Group(TyperGroup):
    """The root group, with the same help rendering as :class:`Command`."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _flags_without_placeholder(self.get_params(ctx))
        super().format_help(ctx, formatter)


_GC_DEFERRED = {"active": False}


def defer_gc() -> None:
    """Turn the cyclic garbage collector off for start-up (the console script calls this first).

    Importing torch and matplotlib allocates about a million long-lived objects; the collections that
    triggers find nothing to free but cost ~0.3 s per command. :func:`settle_gc` turns collection back on."""
    if gc.isenabled():
        gc.disable()
        _GC_DEFERRED["active"] = True


def settle_gc() -> None:
    """After a command's heavy imports: move everything allocated so far to the permanent generation
    (``gc.freeze``, never scanned again) and turn automatic collection back on.

    Does nothing unless :func:`defer_gc` turned collection off (e.g. in tests, or when cotviz is used
    as a library, the collector is left alone)."""
    if _GC_DEFERRED["active"]:
        _GC_DEFERRED["active"] = False
        gc.freeze()
        gc.enable()


def console() -> Any:
    """A rich console on stdout (created lazily)."""
    from rich.console import Console

    return Console()


def err_console() -> Any:
    """A rich console on stderr."""
    from rich.console import Console

    return Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr (one line) and return the ``typer.Exit`` to raise."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


@contextmanager
def route_warnings() -> Iterator[None]:
    """Show every Python warning raised inside as one ``warning: ...`` line on stderr (each message once), without
    the internal file path and source line Python prints (``--debug`` keeps Python's format)."""
    if DEBUG["enabled"]:
        yield
        return
    seen: set[str] = set()

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def handle_errors(fn: F) -> F:
    """Turn domain errors into one stderr line and a non-zero exit (``--debug``: re-raise); route warnings
    through :func:`route_warnings`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cotviz.errors import CotvizError

        try:
            with route_warnings():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, BrokenPipeError):
            raise
        except CotvizError as err:
            if DEBUG["enabled"]:
                raise
            raise fail(str(err), err.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except Exception as err:  # an unexpected failure still gets one line, traceback behind --debug
            if DEBUG["enabled"]:
                raise
            raise fail(f"{type(err).__name__}: {err} (run with --debug for the traceback)") from None

    return wrapper  # type: ignore[return-value]


def write_output(text: str, out: Any) -> None:
    """``text`` to the file ``out`` (a Path; "wrote ..." on stderr) or, when ``out`` is None, to stdout."""
    from cotviz.errors import OutputError

    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as err:
        raise OutputError(f"--out {out}: cannot write ({err.strerror or err})") from None
    print(f"wrote {out}", file=sys.stderr)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (plain ``print``: no rich markup or wrapping), through the one JSON
    encoder (:func:`cotviz.io.outputs.json_text`: NaN/Inf -> null, paths and numpy/torch scalars converted)."""
    from cotviz.io.outputs import json_text

    print(json_text(data), end="")
