"""Frames on disk: find them, read them a few at a time, write results atomically."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UnsampleError, disk_full_text
from ..protocol import FRAME_SUFFIXES, ErrorCode


def _natural_key(path: Path) -> list:
    # "frame_10.png" after "frame_9.png": compare digit runs as numbers.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_frames(folder: Path | str) -> list[Path]:
    """The frame files in ``folder`` in clip order; refuses a missing or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UnsampleError(ErrorCode.BAD_FRAMES, f"the frames folder does not exist: {folder}")
    frames = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")),
        key=_natural_key,
    )
    if not frames:
        raise UnsampleError(ErrorCode.BAD_FRAMES, f"no frames in {folder} (looked for {', '.join(FRAME_SUFFIXES)})")
    return frames


def common_size(frames: Sequence[Path]) -> tuple[int, int]:
    """The (width, height) all frames share; reads only the headers."""
    sizes: dict[tuple[int, int], Path] = {}
    for path in frames:
        try:
            with Image.open(path) as image:
                sizes.setdefault(image.size, path)
        except OSError as error:
            raise UnsampleError(ErrorCode.BAD_FRAMES, f"cannot read frame {path.name}: {error}") from error
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h} ({p.name})" for (w, h), p in list(sizes.items())[:3])
        raise UnsampleError(ErrorCode.BAD_FRAMES, f"frames differ in size: {listed}; export them at one size")
    return next(iter(sizes))


def read_frames(paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray:
    """Frames as uint8 RGB, shape (N, height, width, 3), resized to ``size`` where needed."""
    batch = np.empty((len(paths), size[1], size[0], 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as error:
            raise UnsampleError(ErrorCode.BAD_FRAMES, f"cannot read frame {path.name}: {error}") from error
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        batch[i] = np.asarray(rgb)
    return batch


def write_frame(path: Path, pixels: np.ndarray, size: tuple[int, int] | None = None) -> None:
    """Write one uint8 RGB frame atomically: a reader sees the whole file or none of it."""
    image = Image.fromarray(pixels)
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        image.save(temporary, format=image_format)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            message = f"{disk_full_text(path)} (the frames already written are kept)"
            raise UnsampleError(ErrorCode.DISK_FULL, message) from error
        raise UnsampleError(
            ErrorCode.OUTPUT_NOT_WRITABLE, f"cannot write {path.name} in {path.parent}: {error.strerror or error}"
        ) from error
