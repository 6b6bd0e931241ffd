"""A fix to diffusers that every SDXL motion UNet needs, AnimateDiff's and Hotshot-XL's alike."""

from __future__ import annotations

from torch import nn


def copy_add_embedding(unet: nn.Module, motion_unet: nn.Module) -> None:
    """``UNetMotionModel.from_unet2d`` (diffusers 0.42) leaves SDXL's ``add_embedding``, the projection of
    pooled text and image sizes into the time embedding, at random init; copy the checkpoint's.
    Any SDXL motion UNet needs this, AnimateDiff's too (raised in diffusers PR #6721, never done)."""
    source = getattr(unet, "add_embedding", None)
    if source is not None and getattr(motion_unet, "add_embedding", None) is not None:
        motion_unet.add_embedding.load_state_dict(source.state_dict())
