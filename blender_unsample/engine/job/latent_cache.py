"""Unsample once, restyle many times: unsampled latents kept on disk, keyed by what made them.

The unsampled noise depends only on the source frames and the unsample settings, so a restyle
with a new style prompt, CFG or ControlNet can skip the first pass (and the VAE encode) when the
key matches. Entries are safetensors files with a checksum of their data, evicted least recently
used first once the cache grows past its cap; a damaged entry is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..protocol import (
    CACHE_ENTRY_SUFFIX,
    CACHE_ENTRY_TENSOR,
    CACHE_PARTIAL_SUFFIX,
    CACHE_WRITER,
    RESAMPLE_ROLES,
    UNSAMPLE_ROLES,
    JobSpec,
    Role,
    cache_files,
    settings_with,
)
from .devices import Placement

log = logging.getLogger(__name__)

# The settings that change the unsampled latents: those of the unsample and the models roles
# (protocol.Role). The style prompt, resample CFG, ControlNet (unless it also runs while unsampling),
# noise and seed act on the resample pass only; the memory options compute the same thing in pieces.
UNSAMPLE_SETTINGS = settings_with(*UNSAMPLE_ROLES)
# What the resample pass adds on top of the unsampled latents: the key of the styled ones.
RESAMPLE_SETTINGS = settings_with(*RESAMPLE_ROLES)
_CONTROL_SETTINGS = settings_with(Role.CONTROL_MODEL, Role.CONTROL)
# The model files whose identity (paths, sizes, times) keys the latents, besides their names.
_MODEL_FILES = ("model", "vae", "motion_adapter")
# Bump when the unsample pass changes what it computes (2: SDXL zero uncond, OpenCV canny; 3: LoRAs
# merged by peft, which rounds fp16 and several-LoRA merges differently; 4: frames read as they
# display, EXIF orientation and 16-bit levels).
_VERSION = 4


def cache_key(spec: JobSpec, pixels: str, size: tuple[int, int], placement: Placement) -> str:
    """A hash of the source frames' pixels (``pixels``: frames.pixel_digest), the processing size,
    the kind of device and its precisions, every setting the unsample pass reads, and the identity
    of each model file or folder it loads."""
    digest = hashlib.sha256(f"unsample-cache-{_VERSION}".encode())
    digest.update(pixels.encode())
    settings = {name: getattr(spec, name) for name in UNSAMPLE_SETTINGS}
    settings["unsample_prompt"] = spec.source_prompt  # omitted, it is the style prompt
    models = list(_MODEL_FILES)
    if spec.control_in_unsample:
        settings |= {name: getattr(spec, name) for name in _CONTROL_SETTINGS}
        models.append("controlnet")
    settings["models"] = {name: _identity(getattr(spec, name)) for name in models}
    settings["lora_files"] = [_identity(path) for path, _ in spec.lora_weights]
    # CUDA, MPS and the CPU round differently: a latent made on one is not the other's result.
    backend = [placement.device.type, str(placement.dtype), str(placement.vae_dtype)]
    digest.update(json.dumps([settings, size, backend], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def styled_key(spec: JobSpec, unsample_key: str) -> str:
    """The key of the resampled (styled) latents: the unsample key and every resample setting.
    A job interrupted while decoding finds them here and only decodes the frames it lacks."""
    settings = {name: getattr(spec, name) for name in RESAMPLE_SETTINGS}
    settings["controlnet_file"] = _identity(spec.controlnet) if spec.control != "none" else None
    return hashlib.sha256(json.dumps([unsample_key, settings], sort_keys=True, default=str).encode()).hexdigest()


def _identity(source: str) -> object:
    """A local file or folder by its files' sizes and times (cheap, and changes when they do);
    a Hub id by its name."""
    path = Path(source).expanduser() if source else None
    if path is None or not path.exists():
        return source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


class LatentCache:
    """A folder of unsampled latents with a size cap (bytes); the least recently used go first.

    The folder may hold other files (``--cache-dir`` is the user's choice): the cache counts,
    evicts and clears only its own (protocol.cache_files)."""

    def __init__(self, folder: Path | str, limit_bytes: int) -> None:
        self.folder = Path(folder)
        self.limit_bytes = limit_bytes

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}{CACHE_ENTRY_SUFFIX}"

    def get(self, key: str) -> torch.Tensor | None:
        """The latents stored under ``key``, or None if absent or damaged (a damaged entry is removed)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as entry:
                expected = (entry.metadata() or {}).get("checksum")
                latents = entry.get_tensor(CACHE_ENTRY_TENSOR)
            if expected != _checksum(latents):
                raise ValueError("its checksum differs")
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            log.warning("cached latents %s are damaged (%s): unsampling again", path.name, error)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # most recently used
        return latents

    def put(self, key: str, latents: torch.Tensor) -> None:
        """Store ``latents`` (atomically), then evict the least recently used past the cap."""
        self.folder.mkdir(parents=True, exist_ok=True)
        latents = latents.detach().to("cpu", torch.float32).contiguous()
        temporary = self._path(key).with_suffix(CACHE_PARTIAL_SUFFIX)
        metadata = {"checksum": _checksum(latents), "written_by": CACHE_WRITER}
        save_file({CACHE_ENTRY_TENSOR: latents}, str(temporary), metadata=metadata)
        os.replace(temporary, self._path(key))
        self.evict(keep=key)

    def _entries(self) -> list[Path]:
        return [path for path in cache_files(self.folder) if path.suffix == CACHE_ENTRY_SUFFIX]

    def evict(self, keep: str | None = None) -> None:
        entries = sorted(self._entries(), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        for path in entries:
            if total <= self.limit_bytes:
                break
            if path.stem == keep:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._entries())

    def clear(self) -> None:
        for path in self._entries():
            path.unlink(missing_ok=True)


def _checksum(latents: torch.Tensor) -> str:
    return hashlib.sha256(latents.numpy().tobytes()).hexdigest()
