"""Which family a model is: one detector for folders (their configs), single files (their tensor
names and shapes) and LoRAs (their module names and widths).

Every answer is read off the families' signatures (family.Signature), so a new family is detected
by filling in its own; nothing here names one. Families Unsample recognises but does not run are
listed below, so that their files are refused by name instead of being taken for another family's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import UnsampleError
from ...protocol import DEFAULT_FAMILY, ErrorCode
from ..motion_layout import motion_modules, motion_table_length
from ..weights_file import Shapes, existing_file, file_shapes, has_prefix
from .family import Family, Signature
from .registry import FAMILIES

SD2 = Signature(
    name="sd2",
    label="SD 2.x",
    cross_attention_dim=1024,
    text_width=1024,
    text_encoder_count=1,
    size_conditioned=False,
    first_level_attention=True,
    deep_transformers=False,
    unet_levels=4,
    checkpoint_marker="cond_stage_model.model.",
)
RECOGNISED_ONLY: tuple[Signature, ...] = (SD2,)
SIGNATURES: dict[str, Signature] = {s.name: s for s in (*FAMILIES.values(), *RECOGNISED_ONLY)}
# Checkpoints of a known architecture that the method cannot use, by a tensor-name prefix.
_OTHER_CHECKPOINTS = {"conditioner.embedders.0.model.": "the SDXL refiner"}
# Other families' VAEs, by latent channels, named in a mismatch.
_OTHER_LATENTS = {16: "SD 3 or FLUX"}
UNET_PREFIX = "model.diffusion_model."  # the UNet's tensors in an original-layout checkpoint
_DEFAULT = DEFAULT_FAMILY  # the family a test-sized model (no real widths) is taken for, if nothing tells


def label(name: str) -> str:
    """A family's name for people ("SD 1.5"), recognised-only ones included."""
    return SIGNATURES[name].label if name in SIGNATURES else name


# --- folders (configs) ----------------------------------------------------------------------------


def unet_family(config: Mapping[str, Any]) -> str:
    """A UNet's or ControlNet's family from its config: whether it conditions on size, and its text width."""
    return _by_conditioning(config.get("addition_embed_type") == "text_time", config.get("cross_attention_dim"))


def adapter_family(config: Mapping[str, Any]) -> str:
    """An AnimateDiff MotionAdapter's family: its blocks follow the UNet's levels."""
    return _by_levels(len(config["block_out_channels"]))


def vae_family(config: Mapping[str, Any]) -> str:
    """Which family's latents a VAE makes: same-sized latents differ in their scaling."""
    channels = config.get("latent_channels")
    if channels == 4:
        scaling = config.get("scaling_factor")
        return next((f.name for f in FAMILIES.values() if f.vae_scaling_factor == scaling), _DEFAULT)
    return _OTHER_LATENTS.get(channels, "another model family")


def _by_conditioning(size_conditioned: bool, cross_attention_dim: int | None) -> str:
    alike = [s for s in SIGNATURES.values() if s.size_conditioned == size_conditioned]
    exact = [s.name for s in alike if s.cross_attention_dim == cross_attention_dim]
    if exact:
        return exact[0]
    # A width no family has (the tiny test models, an unusual fine-tune): the family that runs alike.
    runnable = [s.name for s in alike if s.name in FAMILIES]
    return runnable[0] if runnable else _DEFAULT


def _by_levels(levels: int) -> str:
    return next((f.name for f in FAMILIES.values() if f.unet_levels == levels), _DEFAULT)


# --- single files (tensor names and shapes) --------------------------------------------------------


def checkpoint_file_family(path: str | Path) -> str:
    """The family of a whole checkpoint file; reads only the header of a .safetensors."""
    file = existing_file(path, "checkpoint")
    return checkpoint_family(file_shapes(file, "checkpoint")[0], file.name)


def checkpoint_family(shapes: Shapes, name: str = "the file") -> str:
    """The family of a whole original-layout checkpoint from its tensor names (and one shape);
    anything else is refused, by name where it is known."""
    if not has_prefix(shapes, UNET_PREFIX):
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{name} is not a Stable Diffusion checkpoint: {seems(shapes)}")
    in_channels = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight", (0, 4))[1]
    if in_channels != 4:
        raise unsupported(name, f"an inpainting or instruct-pix2pix checkpoint (its UNet takes {in_channels} channels)")
    for signature in SIGNATURES.values():
        if has_prefix(shapes, signature.checkpoint_marker):
            if signature.name in FAMILIES:
                return signature.name
            raise unsupported(name, f"a {signature.label} checkpoint")
    for marker, what in _OTHER_CHECKPOINTS.items():
        if has_prefix(shapes, marker):
            raise unsupported(name, what)
    raise UnsampleError(
        ErrorCode.MODEL_INVALID, f"{name} has a UNet but no text encoder: give a whole {_runnable()} checkpoint"
    )


def controlnet_family(shapes: Shapes) -> str:
    """A ControlNet file's family (ControlNet 1.x's layout or diffusers'): size conditioning, text width."""
    size_conditioned = any(key.endswith(("label_emb.0.0.weight", "add_embedding.linear_1.weight")) for key in shapes)
    width = next((shape[1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")), None)
    return _by_conditioning(size_conditioned, width)


def motion_module_family(shapes: Shapes, name: str = "the file") -> tuple[str, str]:
    """(family, AnimateDiff release) of a motion module, in AnimateDiff's layout or diffusers'."""
    if any("lora" in key.lower() for key in shapes):
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{name} is a LoRA, not an AnimateDiff motion module")
    if has_prefix(shapes, "controlnet_cond_embedding"):
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{name} is a SparseCtrl ControlNet, not a motion module")
    down = motion_modules(shapes, "down_blocks")
    if not down:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{name} is not an AnimateDiff motion module: {seems(shapes)}")
    family = FAMILIES[_by_levels(len(down))]
    return family.name, _release(family, shapes)


def _release(family: Family, shapes: Shapes) -> str:
    """Which of the family's AnimateDiff releases: v2 added a mid block, v1's position table is 24 frames long."""
    releases = list(family.motion_releases)
    if len(releases) == 1:
        return releases[0]
    if motion_modules(shapes, "mid_block"):
        return "v2"
    return "v1" if motion_table_length(shapes) == 24 else "v3"


def seems(shapes: Shapes) -> str:
    """What a file that is not what was wanted seems to be, for the message."""
    keys = list(shapes)
    if has_prefix(keys, UNET_PREFIX):
        return "it looks like a whole Stable Diffusion checkpoint"
    if any("lora" in key.lower() for key in keys):
        return "it looks like a LoRA"
    if any(".motion_modules." in key for key in keys):
        return "it looks like an AnimateDiff motion module"
    if any(".temporal_attentions." in key for key in keys):
        return "it looks like Hotshot-XL's temporal layers"
    if has_prefix(keys, "control_model.") or has_prefix(keys, "input_hint_block.") or has_prefix(keys, "controlnet_"):
        return "it looks like a ControlNet"
    if has_prefix(keys, "encoder.") and has_prefix(keys, "decoder."):
        return "it looks like a VAE"
    if has_prefix(keys, "down_blocks.") and has_prefix(keys, "conv_in."):
        return "it looks like a UNet alone in diffusers' layout"
    return f"none of its {len(keys)} tensors belongs to one (the first is {keys[0]!r})" if keys else "it is empty"


def unsupported(name: str, what: str) -> UnsampleError:
    return UnsampleError(
        ErrorCode.MODEL_INVALID, f"{name} is {what}, which Unsample does not support: use {_runnable()}"
    )


def _runnable() -> str:
    return " or ".join(f.label for f in FAMILIES.values())


# --- LoRAs (module names and widths) --------------------------------------------------------------


def lora_families(module: str, component: str, width: int | None) -> set[str]:
    """The families one LoRA update fits, from its module name in the file (kohya's or diffusers'),
    its component ("unet", "text_encoder", ...) and the input width of its down projection."""
    fits = list(SIGNATURES.values())
    if module.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")):
        fits = [s for s in fits if s.text_encoder_count == 2]  # kohya names two encoders te1 and te2
    elif module.startswith("lora_te_"):
        fits = [s for s in fits if s.text_encoder_count == 1]
    if re.search(r"add_embedding|label_emb", module):
        fits = [s for s in fits if s.size_conditioned]
    if re.search(r"transformer_blocks[._][1-9]", module):
        fits = [s for s in fits if s.deep_transformers]
    if re.search(r"down_blocks[._]0[._]attentions|input_blocks[._][12][._]1[._]", module):
        fits = [s for s in fits if s.first_level_attention]
    if re.search(r"attn2[._]to_[kv]$", module):
        fits = _of_width(fits, width, "cross_attention_dim")
    if component == "text_encoder" and re.search(r"self_attn[._]q_proj$", module):
        fits = _of_width(fits, width, "text_width")
    return {s.name for s in fits}


def _of_width(fits: list[Signature], width: int | None, kind: str) -> list[Signature]:
    """Narrowed to the width where some family has it; a width none has (a tiny model) tells nothing."""
    if not any(getattr(s, kind) == width for s in SIGNATURES.values()):
        return fits
    return [s for s in fits if getattr(s, kind) == width]
