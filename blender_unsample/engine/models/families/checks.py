"""Whether a set of files fits together: checkpoint, VAE, ControlNet and motion module of one family.

Every check reads only configs, so a mismatch is reported before any weights move or any frame
is sampled, with both files and their families named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import UnsampleError
from ...protocol import ErrorCode
from .detect import adapter_family, label, unet_family, vae_family
from .registry import FAMILIES


def check_family(family: str, checkpoint: str, actual: str) -> None:
    """The family setting must be the checkpoint's own: every default follows from it."""
    if actual == family:
        return
    if actual not in FAMILIES:
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"the checkpoint {checkpoint} is {label(actual)}, which Unsample does not support: "
            f"use {' or '.join(f.label for f in FAMILIES.values())}",
        )
    raise UnsampleError(
        ErrorCode.MODEL_MISMATCH,
        f"the checkpoint {checkpoint} is {label(actual)} but the model family is set to {label(family)}: "
        f"set the family to {label(actual)} (command line: --family {actual})",
    )


def check_motion_adapter(adapter: str, adapter_config: Mapping[str, Any], checkpoint: str, unet_config: Any) -> None:
    """The adapter's blocks must match the UNet's levels and widths, layer for layer."""
    channels = tuple(adapter_config["block_out_channels"])
    layers = adapter_config.get("motion_layers_per_block")
    unet_layers = unet_config["layers_per_block"]
    fits = channels == tuple(unet_config["block_out_channels"]) and (
        layers is None or layers == unet_layers or (isinstance(layers, list | tuple) and tuple(layers) == unet_layers)
    )
    if not fits:
        raise _mismatch("motion module", adapter, label(adapter_family(adapter_config)), checkpoint, unet_config)


def check_controlnet(controlnet: str, controlnet_config: Mapping[str, Any], checkpoint: str, unet_config: Any) -> None:
    same_family = unet_family(controlnet_config) == unet_family(unet_config)
    same_text = controlnet_config.get("cross_attention_dim") == unet_config.get("cross_attention_dim")
    if not (same_family and same_text):
        raise _mismatch("ControlNet", controlnet, label(unet_family(controlnet_config)), checkpoint, unet_config)


def check_vae(vae: str, vae_config: Mapping[str, Any], checkpoint: str, unet_config: Mapping[str, Any]) -> None:
    if vae_config.get("latent_channels") != unet_config.get("in_channels"):
        family = label(unet_family(unet_config))
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the VAE {vae} is made for {label(vae_family(vae_config))} ({vae_config.get('latent_channels')}-channel "
            f"latents), but the checkpoint {checkpoint} is {family} ({unet_config.get('in_channels')}-channel "
            f"latents): pick a VAE for {family}",
        )


def _mismatch(role: str, path: str, family: str, checkpoint: str, unet_config: Mapping[str, Any]) -> UnsampleError:
    own = label(unet_family(unet_config))
    return UnsampleError(
        ErrorCode.MODEL_MISMATCH,
        f"the {role} {path} is made for {family}, but the checkpoint {checkpoint} is {own}: pick a {role} for {own}",
    )
