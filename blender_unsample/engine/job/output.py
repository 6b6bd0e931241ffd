"""The output folder: written by one job at a time, and never at the cost of a file Unsample did not write.

A job holds a lock on the folder (``.unsample-lock``, naming the job) from its first check until it
ends; a second job into the same folder fails at once, naming the first. A manifest
(``.unsample-job``) records the key of the styled latents the frames come from and every file name
Unsample wrote there: the same job run again keeps the frames it wrote, a new job overwrites only
frames Unsample wrote, and a frame of the user's under a name the job would write stops it before
any work. Images there that this job does not write are left alone, and the user is told.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnsampleError
from ..protocol import FRAME_SUFFIXES, ErrorCode, JobSpec
from .frames import remove_partial_frames

LOCK_NAME = ".unsample-lock"
MANIFEST_NAME = ".unsample-job"
_SHOWN = 3  # file names quoted in a message before "and N more"


def usable_folder(folder: Path, what: str, hint: str = "") -> Path:
    """``folder`` made if missing and checked writable, before any work; else the error names it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".unsample-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UnsampleError(
            ErrorCode.OUTPUT_NOT_WRITABLE, f"cannot write to the {what} {folder}: {error.strerror or error}{hint}"
        ) from error
    return folder


@dataclass
class Manifest:
    """What Unsample wrote in an output folder: the styled latents' key, and the file names."""

    key: str = ""
    written: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The folder's manifest; None when Unsample never wrote there (or its manifest is unreadable)."""
        path = folder / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if text and not text.startswith("{"):
            # Written by an Unsample that recorded only the key: the frames there are taken to be its
            # own, as that version took them.
            return cls(text, {p.name for p in _images(folder)})
        try:
            data = json.loads(text)
            return cls(str(data["key"]), {str(name) for name in data["written"]})
        except (ValueError, KeyError, TypeError):
            return None

    def write(self, folder: Path) -> None:
        path = folder / MANIFEST_NAME
        temporary = path.with_name(f"{MANIFEST_NAME}.{os.getpid()}.partial")
        temporary.write_text(json.dumps({"key": self.key, "written": sorted(self.written)}), encoding="utf-8")
        os.replace(temporary, path)


class OutputFolder:
    """A job's claim on its output folder; use :meth:`claim` as a context manager."""

    def __init__(self, folder: Path, names: list[str], manifest: Manifest | None) -> None:
        self.folder = folder
        self.names = names  # what this job writes, in clip order
        self.manifest = manifest or Manifest()

    @classmethod
    @contextlib.contextmanager
    def claim(cls, spec: JobSpec, frames: Sequence[Path], warn: Callable[[str], None]) -> Iterator[OutputFolder]:
        """Check and lock the output folder for this job's frames, for as long as the block runs."""
        folder = Path(spec.out).expanduser()
        if folder.resolve() == Path(spec.frames).expanduser().resolve():
            raise UnsampleError(
                ErrorCode.BAD_SETTINGS, "the output folder is the input folder: the source frames would be overwritten"
            )
        usable_folder(folder, "output folder")
        with _locked(folder, spec):
            output = cls(folder, [p.name for p in frames], Manifest.read(folder))
            output._refuse_foreign_files()
            output._tell_of_other_images(warn)
            yield output

    def frames_kept(self, key: str) -> set[str]:
        """Frames already here that this same job (the same styled latents, ``key``) wrote before it
        stopped; the manifest is then updated to this job before any frame is written."""
        remove_partial_frames(self.folder)
        same_job = bool(key) and self.manifest.key == key
        kept = {name for name in self.names if (self.folder / name).is_file()} if same_job else set()
        self.manifest.key = key
        self.manifest.written |= set(self.names)
        self.manifest.write(self.folder)
        return kept

    def _refuse_foreign_files(self) -> None:
        """A file under a name this job writes that Unsample did not write: the user's, never overwritten."""
        foreign = [n for n in self.names if n not in self.manifest.written and (self.folder / n).exists()]
        if foreign:
            raise UnsampleError(
                ErrorCode.OUTPUT_NOT_WRITABLE,
                f"the output folder {self.folder} already holds {_listed(foreign)}, which Unsample did not write "
                "and this job would overwrite: choose an empty folder, or move those files away",
            )

    def _tell_of_other_images(self, warn: Callable[[str], None]) -> None:
        ours = set(self.names)
        others = [p.name for p in _images(self.folder) if p.name not in ours]
        if others:
            warn(
                f"the output folder {self.folder} also holds {_listed(others)}, which this job does not write: "
                "they are left as they are, so the folder is not this clip alone"
            )


# --- the lock -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(folder: Path, spec: JobSpec) -> Iterator[None]:
    """An exclusive, advisory lock on ``folder/.unsample-lock`` that the system releases if the
    process dies; its text names the holder for whoever finds it held."""
    path = folder / LOCK_NAME
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "frames": str(spec.frames), "since": time.time()}
    for _ in range(10):  # the lock file may be replaced under us by a job ending just now
        file = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the lock's lifetime
        if not _try_lock(file):
            text = _read_holder(file)
            file.close()
            raise UnsampleError(ErrorCode.OUTPUT_IN_USE, f"the output folder {folder} is in use by {text}")
        if _same_file(file, path):
            break
        _unlock(file)
        file.close()
    else:
        raise UnsampleError(ErrorCode.OUTPUT_IN_USE, f"the output folder {folder} is being claimed by other jobs")
    try:
        file.seek(1)
        file.truncate()
        file.write(json.dumps(holder))
        file.flush()
        yield
    finally:
        # Removed while still held, so no job ever locks a file that is about to disappear.
        with contextlib.suppress(OSError):
            os.unlink(path)
        _unlock(file)
        file.close()


def _read_holder(file) -> str:
    """Who holds the lock, for the message."""
    try:
        file.seek(1)  # byte 0 is the locked one on Windows, where a locked range cannot be read
        holder = json.loads(file.read())
        since = time.strftime("%H:%M:%S", time.localtime(float(holder["since"])))
        where = "" if holder["host"] == socket.gethostname() else f" on {holder['host']}"
        return (
            f"another job (process {holder['pid']}{where}, restyling {holder['frames']} since {since}): wait for it "
            "to end, or choose another output folder"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another job: wait for it to end, or choose another output folder"


def _same_file(file, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(file.fileno()), os.stat(path))
    except OSError:
        return False


if sys.platform == "win32":
    import msvcrt

    def _try_lock(file) -> bool:
        file.seek(0)
        if not file.read(1):
            file.write(" ")  # the byte locked
            file.flush()
        file.seek(0)
        try:
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(file) -> None:
        with contextlib.suppress(OSError):
            file.seek(0)
            msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(file) -> bool:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        file.seek(0)
        if not file.read(1):
            file.write(" ")  # the same layout as on Windows: the holder from byte 1
            file.flush()
        return True

    def _unlock(file) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


# --- helpers --------------------------------------------------------------------------------------


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))


def _listed(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:_SHOWN])
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{len(names)} file{'s' if len(names) != 1 else ''} ({shown}{more})"
