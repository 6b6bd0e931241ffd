"""CLIP text encoders from an original-layout checkpoint's tensors, in transformers' classes.

diffusers' only public loader for these is the pipeline's ``from_single_file``: it takes a path (so
it would read the whole file a second time), cannot read SD 1.x files whose CLIP lacks
``text_model.``, and gives SDXL's second encoder the first one's weights when both are equally wide.
The weights need only renaming (:func:`from_open_clip`); transformers does the rest."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# SDXL's second text encoder is OpenCLIP's: its names, and transformers' for the same tensors.
_OPEN_CLIP_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
_OPEN_CLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def clip_model(
    name: str, class_name: str, weights: Mapping[str, torch.Tensor], folder: Path, dtype: torch.dtype
) -> Any:
    """The text encoder ``name`` (diffusers' folder name), of transformers' class ``class_name``,
    built from its config in ``folder`` and filled with ``weights`` (transformers' names, with or
    without ``text_model.``). What the weights lack stays on the meta device, for the caller to find."""
    import transformers
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig

    cls = getattr(transformers, class_name)
    config = CLIPTextConfig.from_pretrained(folder, subfolder=name, local_files_only=True)
    with init_empty_weights():  # parameters take no memory until the file's are put in; buffers are real
        model = cls(config)
    # Files carry transformers 4's names, everything under text_model. (older SD 1.x ones without it);
    # transformers 5 keeps that level only in the model with a projection. Match the names without it.
    own = {key.removeprefix("text_model."): key for key in model.state_dict()}
    plain = {key.removeprefix("text_model."): value for key, value in weights.items()}
    named = {own[key]: value for key, value in plain.items() if key in own}
    model.load_state_dict(named, strict=False, assign=True)
    return model.to(dtype).eval()


def from_open_clip(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder from OpenCLIP's names to transformers' (without ``text_model.``);
    what has no counterpart (``logit_scale``, ``attn_mask``) is left out."""
    converted = {}
    for key, value in weights.items():
        if key in _OPEN_CLIP_TOP:
            converted[_OPEN_CLIP_TOP[key]] = value
        elif key == "text_projection":  # OpenCLIP multiplies by it from the right; a Linear from the left
            converted["text_projection.weight"] = value.T.contiguous()
        elif match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key):
            layer, module, kind = f"encoder.layers.{match[1]}.", match[2], match[3]
            if module in _OPEN_CLIP_LAYER:
                converted[f"{layer}{_OPEN_CLIP_LAYER[module]}.{kind}"] = value
        elif match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key):
            # Query, key and value projections stacked in one tensor, in that order.
            for part, chunk in zip("qkv", value.chunk(3), strict=True):
                converted[f"encoder.layers.{match[1]}.self_attn.{part}_proj.{match[2]}"] = chunk
    return converted


def is_open_clip(weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether a text encoder's tensors are in OpenCLIP's names (SDXL's second encoder) rather than
    transformers'."""
    return any(key.startswith("transformer.resblocks.") for key in weights)
