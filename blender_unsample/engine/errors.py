"""Failures the user can act on, each carrying its protocol error code."""

from __future__ import annotations

from .protocol import ErrorCode


class UnsampleError(Exception):
    """A failure with a message for the user; ``code`` tells Blender and scripts which kind."""

    def __init__(self, code: ErrorCode, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


class Cancelled(UnsampleError):
    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(ErrorCode.CANCELLED, reason)


def first_line(error: BaseException) -> str:
    """The first line of an exception's text (libraries' messages run on), or its class name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
