"""Frames on disk: find them, read them as they display, write results atomically.

A frame reaches the model as a viewer shows it: EXIF orientation applied, 16-bit levels scaled to
8 bits, palette and grey images as RGB. Transparency is not something the model paints, so a frame's
alpha is set aside and given back to its styled frame. What cannot be read faithfully (floating-point
or 32-bit integer pixels, whose levels have no agreed meaning) is refused with its name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import UnsampleError, disk_full_text
from ..protocol import FRAME_SUFFIXES, ErrorCode

PARTIAL_PREFIX = ".unsample-"  # a frame being written: ".unsample-<digest>-<pid>.partial", renamed once whole
PARTIAL_SUFFIX = ".partial"
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_QUALITY = {"JPEG": 95, "WEBP": 95}  # lossy formats: close to the decoded frame, not Pillow's default 75


def _natural_key(path: Path) -> list:
    # "frame_10.png" after "frame_9.png": compare digit runs as numbers.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_frames(folder: Path | str) -> list[Path]:
    """The frame files in ``folder`` in clip order; refuses a missing or empty folder."""
    folder = Path(folder)
    if folder.is_file():
        raise UnsampleError(ErrorCode.BAD_FRAMES, f"the frames folder is a file, not a folder of frames: {folder}")
    if not folder.is_dir():
        raise UnsampleError(ErrorCode.BAD_FRAMES, f"the frames folder does not exist: {folder}")
    frames = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")),
        key=_natural_key,
    )
    if not frames:
        raise UnsampleError(ErrorCode.BAD_FRAMES, f"no frames in {folder} (looked for {', '.join(FRAME_SUFFIXES)})")
    for path in frames:
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            # The styled frame keeps the name, and events carry it as UTF-8 text: it must be one.
            shown = os.fsencode(path.name).decode("ascii", "backslashreplace")  # its bytes, as they are
            raise UnsampleError(
                ErrorCode.BAD_FRAMES, f"the frame name {shown} in {folder} is not valid UTF-8: rename the file"
            ) from None
    return frames


@dataclass(frozen=True)
class FramesInfo:
    """What the frames' headers say: the size they display at, and how many have transparency."""

    size: tuple[int, int]
    with_alpha: int


def inspect_frames(frames: Sequence[Path]) -> FramesInfo:
    """Reads only the headers: the (width, height) all frames share as they display, and refuses
    frames of differing sizes or of pixel formats that cannot be read faithfully."""
    sizes: dict[tuple[int, int], Path] = {}
    with_alpha = 0
    for path in frames:
        with _opened(path) as image:
            _check_mode(image, path)
            sizes.setdefault(_display_size(image), path)
            with_alpha += _has_alpha(image)
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h} ({p.name})" for (w, h), p in list(sizes.items())[:3])
        raise UnsampleError(ErrorCode.BAD_FRAMES, f"frames differ in size: {listed}; export them at one size")
    return FramesInfo(next(iter(sizes)), with_alpha)


def load_frame(path: Path) -> tuple[Image.Image, np.ndarray | None]:
    """One frame as it displays: 8-bit RGB, and its alpha (uint8, H x W) or None when it has none."""
    with _opened(path) as image:
        _check_mode(image, path)
        # A 16-bit grey PNG opens as "I;16" (or "I" in older Pillow): levels 0-65535.
        sixteen_bit = image.mode in _SIXTEEN_BIT or (image.mode == "I" and image.format == "PNG")
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError) as error:  # Pillow's decoders raise all three
            raise UnsampleError(ErrorCode.BAD_FRAMES, f"cannot read frame {path.name}: {error}") from error
    if sixteen_bit:
        levels = np.asarray(upright, dtype=np.uint32)
        upright = Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8))
    if _has_alpha(upright):
        rgba = upright.convert("RGBA")
        return rgba.convert("RGB"), np.asarray(rgba)[..., 3].copy()
    return upright.convert("RGB"), None


def read_frames(paths: Sequence[Path], size: tuple[int, int]) -> np.ndarray:
    """Frames as uint8 RGB, shape (N, height, width, 3), resized to ``size`` where needed."""
    batch = np.empty((len(paths), size[1], size[0], 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        rgb, _ = load_frame(path)
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        batch[i] = np.asarray(rgb)
    return batch


def read_alpha(path: Path) -> np.ndarray | None:
    """A frame's alpha as it displays, or None (from the header alone when it has none)."""
    with _opened(path) as image:
        if not _has_alpha(image):
            return None
    return load_frame(path)[1]


def pixel_digest(paths: Sequence[Path]) -> str:
    """A hash of the frames' pixels as the model sees them (not of the files' bytes: an export's
    metadata, dates or paths must not matter); decoding every frame also finds any damaged one."""
    digest = hashlib.sha256()
    for path in paths:
        rgb, _ = load_frame(path)  # alpha is given back to the styled frame: the latents never see it
        digest.update(f"{rgb.size}".encode())
        digest.update(rgb.tobytes())
    return digest.hexdigest()


def write_frame(
    path: Path, pixels: np.ndarray, size: tuple[int, int] | None = None, alpha: np.ndarray | None = None
) -> None:
    """Write one uint8 RGB frame atomically (a reader sees the whole file or none of it), resized to
    ``size``; with ``alpha`` (at ``size``) it is written with that transparency."""
    image = Image.fromarray(pixels)
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    if alpha is not None:
        image.putalpha(Image.fromarray(alpha))
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    # A short name of our own: the frame's name may be near the file system's limit already.
    digest = hashlib.sha1(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    temporary = path.with_name(f"{PARTIAL_PREFIX}{digest}-{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        options = {"quality": _QUALITY[image_format]} if image_format in _QUALITY else {}
        image.save(temporary, format=image_format, **options)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):  # the original error is the one to report
            temporary.unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            message = f"{disk_full_text(path)} (the frames already written are kept)"
            raise UnsampleError(ErrorCode.DISK_FULL, message) from error
        raise UnsampleError(
            ErrorCode.OUTPUT_NOT_WRITABLE, f"cannot write {path.name} in {path.parent}: {error.strerror or error}"
        ) from error


def remove_partial_frames(folder: Path) -> None:
    """Frames left half-written in ``folder`` by an interrupted job: only our own temporary names."""
    for partial in folder.glob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)


# --- inside ---------------------------------------------------------------------------------------


def _opened(path: Path):
    try:
        return Image.open(path)
    except FileNotFoundError as error:
        raise UnsampleError(ErrorCode.BAD_FRAMES, f"frame {path.name} is gone from {path.parent}") from error
    except (OSError, ValueError) as error:
        raise UnsampleError(ErrorCode.BAD_FRAMES, f"cannot read frame {path.name}: {error}") from error


def _check_mode(image: Image.Image, path: Path) -> None:
    if image.mode == "F" or (image.mode == "I" and image.format != "PNG"):
        kind = "floating-point" if image.mode == "F" else "32-bit integer"
        raise UnsampleError(
            ErrorCode.BAD_FRAMES,
            f"frame {path.name} has {kind} pixels, whose levels and colour space cannot be known: "
            "export 8- or 16-bit PNG (in Blender: Output > Color Depth 8 or 16)",
        )


def _display_size(image: Image.Image) -> tuple[int, int]:
    """The size as a viewer shows it: EXIF orientations 5-8 turn the picture a quarter."""
    try:
        orientation = image.getexif().get(0x0112)
    except (OSError, ValueError, SyntaxError):
        orientation = None
    width, height = image.size
    return (height, width) if orientation in _ROTATED else (width, height)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode in {"P", "L", "RGB"} and "transparency" in image.info)
