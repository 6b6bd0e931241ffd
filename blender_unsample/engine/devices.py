"""Where the models run, in what precision, and how they share a small GPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import UnsampleError
from .protocol import ErrorCode


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # UNet, ControlNet, text encoder
    vae_dtype: torch.dtype


def pick_placement(name: str) -> Placement:
    """``auto`` picks CUDA (fp16), then Apple MPS (fp16, VAE in fp32), then the CPU (fp32)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UnsampleError(ErrorCode.BAD_SETTINGS, "device cuda was asked for, but torch sees no CUDA GPU")
        return Placement(torch.device("cuda"), torch.float16, torch.float16)
    if name == "mps":
        if not _mps_available():
            raise UnsampleError(ErrorCode.BAD_SETTINGS, "device mps was asked for, but this torch has no MPS")
        # The SD VAE overflows in fp16 on MPS; it is a small share of the work in fp32.
        return Placement(torch.device("mps"), torch.float16, torch.float32)
    if name == "cpu":
        return Placement(torch.device("cpu"), torch.float32, torch.float32)
    raise UnsampleError(ErrorCode.BAD_SETTINGS, f"unknown device {name!r}; use auto, cuda, mps or cpu")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def place_models(chain: list[Any], device: torch.device, cpu_offload: bool, standalone: list[Any] = ()) -> None:
    """Move models to ``device``.

    With ``cpu_offload`` (CUDA only) each model of ``chain`` moves onto the GPU when it runs and
    pushes the one before it back to the CPU. ``standalone`` models (the ControlNet, called in
    turn with the UNet at every step) get their own hook so the two do not evict each other.
    """
    chain = [m for m in chain if m is not None]
    standalone = [m for m in standalone if m is not None]
    if not cpu_offload or device.type != "cuda":
        for model in (*chain, *standalone):
            model.to(device)
        return
    from accelerate import cpu_offload_with_hook

    hook = None
    for model in chain:
        _, hook = cpu_offload_with_hook(model, device, prev_module_hook=hook)
    for model in standalone:
        cpu_offload_with_hook(model, device)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
