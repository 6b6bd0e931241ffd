"""Where jobs keep their files. Pure helpers: no bpy."""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
import unicodedata
from pathlib import Path

from ...engine.protocol import cache_files


def safe_name(name: str, limit: int = 40) -> str:
    """A file-system-safe slug of a strip or scene name, any language, any separators."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_name).strip("-").lower()[:limit]
    return slug or "strip"


def strip_folder(root: Path, blend_file: str, scene: str, strip: str) -> Path:
    """One folder per (file, scene, strip): readable, and unique however the names look."""
    digest = hashlib.sha1("\0".join((blend_file, scene, strip)).encode()).hexdigest()[:8]
    return root / "jobs" / f"{safe_name(scene, 20)}-{safe_name(strip)}-{digest}"


def new_run_folder(strip_dir: Path, kind: str) -> Path:
    """A fresh folder for one run: results of earlier runs, which strips point to, stay as they are."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        folder = (
            strip_dir / "runs" / f"{stamp}-{kind}" if attempt == 0 else strip_dir / "runs" / f"{stamp}-{kind}-{attempt}"
        )
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder under {strip_dir}")


def cache_usage(folder: Path) -> int:
    """Bytes held by the unsample cache in ``folder``."""
    return sum(path.stat().st_size for path in cache_files(folder))


def clear_cache(folder: Path) -> int:
    """Delete the cache's own entries in ``folder`` (nothing else there); returns how many bytes were freed."""
    freed = 0
    for path in cache_files(folder):
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            freed += size
    return freed
