"""Errors that cotviz raises on purpose.

Every error carries a one-line message that says what went wrong and what to do. The CLI prints
``str(err)`` on stderr and exits with ``err.exit_code`` (1; usage errors 2); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

__all__ = [
    "CotvizError",
    "UnknownModelError",
    "CheckpointError",
    "ImageError",
    "CaptureError",
    "InvalidArgumentError",
    "OutputError",
    "ResourceLimitError",
]


class CotvizError(Exception):
    """Base class: a domain error with a one-line, actionable message."""

    exit_code: int = 1


class UnknownModelError(CotvizError, KeyError):
    """A model name that is neither registered nor an alias."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(CotvizError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the model."""


class ImageError(CotvizError):
    """An image file that is missing, not an image, truncated, unsupported or too large."""


class CaptureError(CotvizError):
    """A capture request that does not fit the model (unknown stage, block or tap; tap never fired)."""


class InvalidArgumentError(CotvizError):
    """An argument outside its valid range (stage, block, head, point, size, device, format)."""

    exit_code = 2


class OutputError(CotvizError):
    """An output location that cannot be written."""


class ResourceLimitError(InvalidArgumentError):
    """Work that would need more memory or CPUs than this machine gives (refused before allocating)."""
