"""Write diffusers models back in the original single-file layouts, for the single-file loader's tests.

Civitai and the Hub ship checkpoints as one file in the layout of the code that trained them:
Stable Diffusion's LDM (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``), SDXL's SGM (the same UNet and VAE, the text encoders under
``conditioner.embedders.{0,1}``, the second one in OpenCLIP's naming), ControlNet's
``control_model.*`` and AnimateDiff's ``*.motion_modules.*.temporal_transformer.*``. These functions
map diffusers state dicts to those layouts, so a tiny diffusers model can be saved the way a real
checkpoint is and loaded back through the real single-file path. The key names were read off the
original repositories' modules and diffusers' ``single_file_utils``; the mapping is written here in
the opposite direction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

State = Mapping[str, torch.Tensor]

# LDM's ResBlock names for diffusers' ResnetBlock2D parts.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# Modules outside the down, mid and up blocks.
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's pooled-text-and-sizes embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# The VAE's mid-block attention: LDM names, and it stores the projections as 1x1 convolutions.
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# AnimateDiff's names inside one temporal transformer block.
_MOTION_BLOCK = {
    "norm1": "norms.0",
    "norm2": "norms.1",
    "norm3": "ff_norm",
    "attn1": "attention_blocks.0",
    "attn2": "attention_blocks.1",
}


def prefixed(prefix: str, state: State) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def ldm_unet(state: State, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A UNet2DConditionModel's weights in LDM/SGM names (without ``model.diffusion_model.``)."""
    rename = _unet_renamer(config)
    return {rename(key): value for key, value in state.items()}


def ldm_controlnet(state: State, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A ControlNetModel's weights as ControlNet 1.x saves them (without ``control_model.``)."""
    hint_blocks = len({key.split(".")[2] for key in state if key.startswith("controlnet_cond_embedding.blocks.")})
    rename = _unet_renamer(config)

    def controlnet_key(key: str) -> str:
        if match := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
            return f"zero_convs.{match[1]}.0.{match[2]}"
        if match := re.fullmatch(r"controlnet_mid_block\.(.+)", key):
            return f"middle_block_out.0.{match[1]}"
        # The hint encoder is one Sequential there: convolutions at even indices, SiLUs between.
        if match := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(.+)", key):
            return f"input_hint_block.0.{match[1]}"
        if match := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
            return f"input_hint_block.{2 * (int(match[1]) + 1)}.{match[2]}"
        if match := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(.+)", key):
            return f"input_hint_block.{2 * (hint_blocks + 1)}.{match[1]}"
        return rename(key)

    return {controlnet_key(key): value for key, value in state.items()}


def _unet_renamer(config: Mapping[str, Any]) -> Callable[[str], str]:
    # LDM numbers a level's layers consecutively: `layers_per_block` ResNet(+attention) layers, then
    # one more slot for the downsampler (input side) or one more layer carrying the upsampler (output).
    per_level = config["layers_per_block"] + 1
    up_has_attention = ["CrossAttn" in kind for kind in config.get("up_block_types", ())]  # a ControlNet has none

    def rename(key: str) -> str:
        if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
            return f"input_blocks.{1 + level * per_level + layer}.{_layer_part(kind, rest)}"
        if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            return f"input_blocks.{(int(match[1]) + 1) * per_level}.0.op.{match[2]}"
        if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"middle_block.{2 * int(match[1])}.{_resnet(match[2])}"
        if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            return f"middle_block.1.{match[1]}"
        if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            level, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
            return f"output_blocks.{level * per_level + layer}.{_layer_part(kind, rest)}"
        if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            level = int(match[1])
            slot = 2 if up_has_attention[level] else 1  # after the attention, if the layer has one
            return f"output_blocks.{level * per_level + per_level - 1}.{slot}.conv.{match[2]}"
        module, _, parameter = key.rpartition(".")
        return f"{_UNET_TOP[module]}.{parameter}"

    return rename


def _layer_part(kind: str, rest: str) -> str:
    return f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"


def _resnet(rest: str) -> str:
    part, _, tail = rest.partition(".")
    return f"{_UNET_RESNET[part]}.{tail}"


def ldm_vae(state: State, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An AutoencoderKL's weights in LDM names (without ``first_stage_model.``)."""
    levels = len(config["block_out_channels"])
    converted = {}
    for key, value in state.items():
        new_key = _vae_key(key, levels)
        if ".mid.attn_1." in new_key and new_key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        converted[new_key] = value
    return converted


def _vae_key(key: str, levels: int) -> str:
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{_vae_resnet(match[3])}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    # LDM's decoder counts its levels from the lowest resolution up, diffusers' from the top down.
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(match[1])}.block.{match[2]}.{_vae_resnet(match[3])}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_vae_resnet(match[3])}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{match[1]}.mid.attn_1.{_VAE_ATTENTION[match[2]]}.{match[3]}"
    return key.replace("conv_norm_out", "norm_out")  # conv_in, conv_out, quant_conv, post_quant_conv as they are


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def hf_clip(state: State, max_tokens: int = 77) -> dict[str, torch.Tensor]:
    """A CLIP text encoder as LDM and SGM embed Hugging Face's ``CLIPTextModel``: its transformers-4
    names (everything under ``text_model.``), with the ``position_ids`` buffer that real files carry."""
    converted = {key if key.startswith("text_model.") else f"text_model.{key}": value for key, value in state.items()}
    converted["text_model.embeddings.position_ids"] = torch.arange(max_tokens)[None]
    return converted


def open_clip(state: State) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder (a ``CLIPTextModelWithProjection``) in OpenCLIP's names: one fused
    query/key/value projection per layer and the text projection stored transposed."""
    flat = {key.removeprefix("text_model."): value for key, value in state.items()}
    converted = {}
    for key, value in flat.items():
        if match := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            if match[2] == "q":  # fuse the three once, in OpenCLIP's order: query, key, value
                layer, parameter = match[1], match[3]
                parts = [flat[f"encoder.layers.{layer}.self_attn.{part}_proj.{parameter}"] for part in "qkv"]
                converted[f"transformer.resblocks.{layer}.attn.in_proj_{parameter}"] = torch.cat(parts)
        elif match := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
            converted[f"transformer.resblocks.{match[1]}.{_open_clip_layer(match[2])}"] = value
        elif key == "text_projection.weight":
            converted["text_projection"] = value.T.contiguous()
        else:
            converted[_OPEN_CLIP_TOP[key]] = value
    return converted


_OPEN_CLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}


def _open_clip_layer(rest: str) -> str:
    for diffusers_name, open_clip_name in (
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
        ("self_attn.out_proj", "attn.out_proj"),
    ):
        if rest.startswith(diffusers_name + "."):
            return open_clip_name + rest[len(diffusers_name) :]
    raise KeyError(rest)


def animatediff(state: State) -> dict[str, torch.Tensor]:
    """A MotionAdapter's weights as AnimateDiff saves a motion module: each temporal transformer under
    ``temporal_transformer``, and the sinusoidal position table once per attention block."""
    converted = {}
    for key, value in state.items():
        match = re.fullmatch(r"(.+\.motion_modules\.\d+)\.(.+)", key)
        if match is None:
            converted[key] = value  # conv_in of the modules that have one
            continue
        module, rest = match[1], match[2]
        block = re.fullmatch(r"(transformer_blocks\.\d+)\.([^.]+)\.(.+)", rest)
        if block is None:
            converted[f"{module}.temporal_transformer.{rest}"] = value
        elif block[2] == "pos_embed":
            for attention in ("attention_blocks.0", "attention_blocks.1"):
                converted[f"{module}.temporal_transformer.{block[1]}.{attention}.pos_encoder.pe"] = value
        else:
            inner = _MOTION_BLOCK.get(block[2], block[2])
            converted[f"{module}.temporal_transformer.{block[1]}.{inner}.{block[3]}"] = value
    return converted


def original_checkpoint(models: Mapping[str, Any], family: str) -> dict[str, torch.Tensor]:
    """One checkpoint file's worth of tensors from a diffusers model set, as Civitai ships SD 1.5
    (LDM) and SDXL (SGM) checkpoints: UNet, VAE and text encoder(s) under their original prefixes."""
    unet, vae = models["unet"], models["vae"]
    state = prefixed("model.diffusion_model.", ldm_unet(unet.state_dict(), unet.config))
    state |= prefixed("first_stage_model.", ldm_vae(vae.state_dict(), vae.config))
    if family == "sd15":
        state |= prefixed("cond_stage_model.transformer.", hf_clip(models["text_encoder"].state_dict()))
    else:
        state |= prefixed("conditioner.embedders.0.transformer.", hf_clip(models["text_encoder"].state_dict()))
        state |= prefixed("conditioner.embedders.1.model.", open_clip(models["text_encoder_2"].state_dict()))
    return {key: value.detach().clone().contiguous() for key, value in state.items()}


# What tells AnimateDiff's SD 1.5 releases apart in their files: v2 added a motion module to the
# mid block; v1's position table covers 24 frames, v2's and v3's 32.
ANIMATEDIFF_RELEASES = {"v1": (False, 24), "v2": (True, 32), "v3": (False, 32)}


def animatediff_release(version: str, block_out_channels: tuple[int, ...], seed: int = 0) -> Any:
    """A random-weight MotionAdapter shaped like AnimateDiff's SD 1.5 ``version`` ("v1", "v2" or "v3")
    for a UNet of these widths, with AnimateDiff's own 8 heads and 32 norm groups (which its files
    do not record); save it with :func:`animatediff` to get the file as AnimateDiff ships it."""
    from diffusers import MotionAdapter

    mid_block, frames = ANIMATEDIFF_RELEASES[version]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MotionAdapter(
            block_out_channels=tuple(block_out_channels),
            motion_layers_per_block=1,
            motion_num_attention_heads=8,
            motion_norm_num_groups=32,
            motion_max_seq_length=frames,
            use_motion_mid_block=mid_block,
        )
