"""Failures the user can act on, each carrying its protocol error code."""

from __future__ import annotations

import threading
from pathlib import Path

from .protocol import ErrorCode


class UnsampleError(Exception):
    """A failure with a message for the user; ``code`` tells Blender and scripts which kind."""

    def __init__(self, code: ErrorCode, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail

    def __reduce__(self) -> tuple:
        # Rebuilt from its own fields when it travels between processes (a cluster's workers).
        return type(self)._rebuild, (self.code, self.message, self.detail)

    @classmethod
    def _rebuild(cls, code: ErrorCode, message: str, detail: str) -> UnsampleError:
        error = cls.__new__(cls)
        UnsampleError.__init__(error, code, message, detail)
        return error


class Cancelled(UnsampleError):
    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(ErrorCode.CANCELLED, reason)


class CancelRequest(threading.Event):
    """An event that asks a job to stop, with what asked: the cancelled error says it."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = "cancelled"

    def request(self, reason: str) -> None:
        self.reason = reason
        self.set()


def cancelled(cancel: threading.Event) -> Cancelled:
    """The error for a job stopped by ``cancel``, with its reason when it carries one."""
    return Cancelled(getattr(cancel, "reason", "cancelled"))


def first_line(error: BaseException) -> str:
    """The first line of an exception's text (libraries' messages run on), or its class name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def disk_full_text(path: str | Path | None) -> str:
    """What to say when ``path`` could not be written for lack of space (the engine's frames, or
    the export process's files on the Blender side, which imports only this module)."""
    what = f"{Path(path).name} could not be written to {Path(path).parent}" if path else "a file could not be written"
    return f"the disk is full: {what}; free some space there, then run the job again"
