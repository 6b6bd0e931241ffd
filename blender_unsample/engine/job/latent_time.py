"""Frames in a causal video VAE's time (Wan's): it encodes the first frame alone and each further
``stride`` frames into one latent frame, so it takes 1 + stride * k frames. Any strip length is
padded up to that by holding its last frame, and the styled clip is cut back to the source's length:
every source frame gets exactly one styled frame, none dropped, none repeated."""

from __future__ import annotations

import torch


def causal_length(frames: int, stride: int) -> int:
    """The fewest frames of the form 1 + stride * k that hold ``frames``."""
    if frames < 1 or stride < 1:
        raise ValueError(f"need at least one frame and a stride of at least 1, got {frames} and {stride}")
    return 1 + stride * -(-(frames - 1) // stride)


def latent_frames(frames: int, stride: int) -> int:
    """How many latent frames a clip of ``frames`` becomes once padded."""
    return 1 + (causal_length(frames, stride) - 1) // stride


def pad_frames(clip: torch.Tensor, stride: int, dim: int = 2) -> torch.Tensor:
    """``clip`` with its last frame held until its length along ``dim`` is 1 + stride * k. Holding
    adds no new picture content, and the padded frames' styled versions are cut off again."""
    frames = clip.shape[dim]
    missing = causal_length(frames, stride) - frames
    if missing == 0:
        return clip
    last = clip.narrow(dim, frames - 1, 1)
    return torch.cat([clip, last.expand(*[missing if d == dim else -1 for d in range(clip.dim())])], dim=dim)


def trim_frames(clip: torch.Tensor, frames: int, dim: int = 2) -> torch.Tensor:
    """The first ``frames`` frames of a decoded clip: the source's length again."""
    if clip.shape[dim] < frames:
        raise ValueError(f"the decoded clip has {clip.shape[dim]} frames, fewer than the source's {frames}")
    return clip.narrow(dim, 0, frames)
