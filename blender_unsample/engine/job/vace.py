"""VACE's weak control for Wan: the control clip (the frames themselves, or their canny edges) as the
conditioning ``WanVACETransformer3DModel`` reads beside the latents, built as diffusers'
``WanVACEPipeline`` builds it for a control video with no mask and no reference image: the latents of
an empty clip (nothing kept as it is), the latents of the control clip (everything to be redrawn
after it), and an all-ones mask folded to the latent grid (one channel per pixel of an 8x8 cell)."""

from __future__ import annotations

from typing import Any

import torch

from .video_vae import encode_video


def vace_control(vae: Any, video: torch.Tensor, transformer: Any, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FlowTransformerDenoiser's ``control`` for ``video`` (1, 3, F, H, W) in [-1, 1]: the states
    (1, 96, latent frames, h, w), float32, and ``scale`` for every VACE layer of ``transformer``."""
    inactive = encode_video(vae, torch.zeros_like(video))
    reactive = encode_video(vae, video)
    spatial = _spatial_factor(vae)
    _, _, frames, height, width = reactive.shape
    mask = torch.ones(1, spatial * spatial, frames, height, width, dtype=reactive.dtype, device=reactive.device)
    layers = len(transformer.config.vace_layers)
    return torch.cat([inactive, reactive, mask], dim=1), torch.full((layers,), float(scale))


def _spatial_factor(vae: Any) -> int:
    """Pixels per latent pixel along a side (8 for Wan 2.1's VAE)."""
    return int(getattr(vae.config, "scale_factor_spatial", 8))
