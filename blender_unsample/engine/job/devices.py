"""Where the models run, in what precision, and how they share a small GPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UnsampleError
from ..models import families
from ..protocol import ErrorCode


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # UNet, ControlNet, text encoder
    vae_dtype: torch.dtype


def pick_placement(name: str) -> Placement:
    """``auto`` picks CUDA (fp16), then Apple MPS (fp16, VAE in fp32), then the CPU (fp32)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UnsampleError(ErrorCode.BAD_SETTINGS, "device cuda was asked for, but torch sees no CUDA GPU")
    if name == "mps" and not _mps_available():
        raise UnsampleError(ErrorCode.BAD_SETTINGS, "device mps was asked for, but this torch has no MPS")
    if name not in ("cuda", "mps", "cpu"):
        raise UnsampleError(ErrorCode.BAD_SETTINGS, f"unknown device {name!r}; use auto, cuda, mps or cpu")
    return placement_for(name)


def placement_for(name: str) -> Placement:
    """The precisions used on a device of kind ``name`` ("cuda", "mps" or "cpu"), whether or not
    this machine has one."""
    if name == "cuda":
        return Placement(torch.device("cuda"), torch.float16, torch.float16)
    if name == "mps":
        # The SD VAE overflows in fp16 on MPS; it is a small share of the work in fp32.
        return Placement(torch.device("mps"), torch.float16, torch.float32)
    return Placement(torch.device("cpu"), torch.float32, torch.float32)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


class Residency:
    """Which models sit on the device. Without offload, all of them from the start; with
    ``offload`` (CUDA only), each job phase brings its own models in and sends them back after,
    so the GPU holds only the text encoders, or the VAE, or the UNet with its ControlNet."""

    def __init__(self, device: torch.device, offload: bool) -> None:
        self.device = device
        self.offload = offload and device.type == "cuda"

    def place(self, models: list[Any]) -> None:
        if not self.offload:
            for model in models:
                if model is not None:
                    model.to(self.device)

    @contextmanager
    def phase(self, *models: Any) -> Iterator[None]:
        present = [m for m in models if m is not None]
        if self.offload:
            for model in present:
                model.to(self.device)
        try:
            yield
        finally:
            if self.offload:
                for model in present:
                    model.to("cpu")
                free_memory(self.device)


def chunk_feed_forward(model: torch.nn.Module) -> None:
    """Run every transformer feed-forward of ``model`` one slice at a time.

    The GEGLU feed-forward widens its input eightfold, and at full latent resolution that is the
    largest tensor of a sampling step (for SDXL the motion module's: 2.5 GiB at 1024 px and 16
    frames). Spatial blocks see (frames, pixels, channels) and are sliced per frame; the motion
    module's blocks see (pixels, frames, channels) and are sliced along frames, so every slice
    stays a large matrix product and the output is the same.
    """
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    temporal = {
        id(block) for module in model.modules() if isinstance(module, AnimateDiffTransformer3D)
        for block in module.transformer_blocks
    }  # fmt: skip
    for module in model.modules():
        if hasattr(module, "set_chunk_feed_forward"):
            module.set_chunk_feed_forward(chunk_size=1, dim=1 if id(module) in temporal else 0)


def default_vae_batch(family: str, vae_dtype: torch.dtype) -> int:
    """Frames per VAE call when not set: the family's (8 for SD 1.5's VAE; SDXL's at 1024 px needs
    about 3 GB a frame in fp32, 1.5 in fp16, so 1, or 2 in fp16)."""
    facts = families.family(family)
    return facts.vae_batch_fp16 if vae_dtype == torch.float16 else facts.vae_batch


def tile_vae(vae: Any) -> None:
    """VAE tiling in diffusers starts above the VAE's own sample size (512 or 1024 px), so at those
    sizes it would never tile: tile from 256 px, in tiles of 256 px."""
    vae.enable_tiling()
    vae.tile_sample_min_size = min(vae.tile_sample_min_size, 256)
    vae.tile_latent_min_size = vae.tile_sample_min_size // (2 ** (len(vae.config.block_out_channels) - 1))


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
