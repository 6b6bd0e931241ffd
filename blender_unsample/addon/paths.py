"""Where jobs keep their files. Pure helpers: no bpy."""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from pathlib import Path


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
