"""Clips through a causal video VAE (Wan's): the whole clip at once in its own time (padded to
1 + stride * k frames, job/latent_time.py), latents normalised by the VAE's per-channel statistics
as its transformer was trained on them. diffusers' VAE encodes and decodes a long clip a few frames
at a time itself (its causal cache), so no clip-long activations are held."""

from __future__ import annotations

from typing import Any

import torch

from .latent_time import pad_frames, trim_frames


def temporal_stride(vae: Any) -> int:
    """Frames per latent frame after the first (4 for Wan 2.1 and 2.2)."""
    return int(getattr(vae.config, "scale_factor_temporal", 4))


def _statistics(vae: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device).view(shape)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device).view(shape)
    return mean, std


def encode_video(vae: Any, video: torch.Tensor) -> torch.Tensor:
    """Normalised latents (B, C, F', H/8, W/8), float32, of ``video`` (B, 3, F, H, W) in [-1, 1]:
    the distribution's mean, so that the same frames always unsample alike."""
    padded = pad_frames(video, temporal_stride(vae))
    latents = vae.encode(padded.to(vae.device, vae.dtype)).latent_dist.mode().to(torch.float32)
    mean, std = _statistics(vae, latents.device)
    return (latents - mean) / std


def decode_video(vae: Any, latents: torch.Tensor, frames: int) -> torch.Tensor:
    """The clip (B, 3, frames, H, W) in [-1, 1], float32, of normalised ``latents``: the source's
    length again (the padding's frames cut off)."""
    mean, std = _statistics(vae, latents.device)
    video = vae.decode((latents * std + mean).to(vae.dtype), return_dict=False)[0]
    return trim_frames(video.to(torch.float32), frames)
