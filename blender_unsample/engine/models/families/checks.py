"""Which model family a file belongs to, and whether a set of files fits together.

Every check reads only configs, so a mismatch is reported before any weights move or any frame
is sampled, with both files and their families named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import UnsampleError
from ...protocol import FAMILY_NAMES, ErrorCode
from .sd15 import SD15
from .sdxl import SDXL

_LATENT_FAMILIES = {16: "SD 3 or FLUX"}  # other families' VAEs, named in a mismatch


def unet_family(config: Mapping[str, Any]) -> str:
    """SDXL's UNet (and its ControlNets) add pooled text and image sizes to the time embedding."""
    return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd15"


def adapter_family(config: Mapping[str, Any]) -> str:
    """AnimateDiff's SDXL module follows SDXL's three UNet levels; SD 1.5's (and the tiny one's) do not."""
    return "sdxl" if len(config["block_out_channels"]) == 3 else "sd15"


def named(family: str) -> str:
    return FAMILY_NAMES.get(family, family)


def check_family(family: str, checkpoint: str, actual: str) -> None:
    """The family setting must be the checkpoint's own: every default follows from it."""
    if actual != family:
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the checkpoint {checkpoint} is {named(actual)} but the model family is set to {named(family)}: "
            f"set the family to {named(actual)} (command line: --family {actual})",
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
        raise _mismatch("motion module", adapter, named(adapter_family(adapter_config)), checkpoint, unet_config)


def check_controlnet(controlnet: str, controlnet_config: Mapping[str, Any], checkpoint: str, unet_config: Any) -> None:
    same_family = unet_family(controlnet_config) == unet_family(unet_config)
    same_text = controlnet_config.get("cross_attention_dim") == unet_config.get("cross_attention_dim")
    if not (same_family and same_text):
        raise _mismatch("ControlNet", controlnet, named(unet_family(controlnet_config)), checkpoint, unet_config)


def vae_family(config: Mapping[str, Any]) -> str:
    """Which family's latents a VAE makes: SD 1.5's and SDXL's both have 4 channels and differ in
    their scaling; 16 channels are SD 3's and FLUX's."""
    channels = config.get("latent_channels")
    if channels == 4:
        return SDXL.name if config.get("scaling_factor") == SDXL.vae_scaling_factor else SD15.name
    return _LATENT_FAMILIES.get(channels, "another model family")


def check_vae(vae: str, vae_config: Mapping[str, Any], checkpoint: str, unet_config: Mapping[str, Any]) -> None:
    if vae_config.get("latent_channels") != unet_config.get("in_channels"):
        family = named(unet_family(unet_config))
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the VAE {vae} is made for {named(vae_family(vae_config))} ({vae_config.get('latent_channels')}-channel "
            f"latents), but the checkpoint {checkpoint} is {family} ({unet_config.get('in_channels')}-channel "
            f"latents): pick a VAE for {family}",
        )


def _mismatch(role: str, path: str, family: str, checkpoint: str, unet_config: Mapping[str, Any]) -> UnsampleError:
    return UnsampleError(
        ErrorCode.MODEL_MISMATCH,
        f"the {role} {path} is made for {family}, but the checkpoint {checkpoint} is "
        f"{named(unet_family(unet_config))}: pick a {role} for {named(unet_family(unet_config))}",
    )
