"""Wan 2.1 / 2.2 (flow-matching video transformers) from a diffusers folder or a Hub id: the UMT5
text encoder and its tokenizer, the transformer (and Wan 2.2 A14B's second, low-noise expert with
the boundary between them), the causal video VAE. diffusers' and transformers' own classes load them.
The transformer may also be one file in Wan's own layout (as ComfyUI users have it); its configs and
the other parts then come from a diffusers folder or Hub id (``config``, by default Wan 2.1 1.3B's).

Whether the parts fit together is checked on their configs first, before any weights are read:
the VAE's latent channels against the transformer's (Wan 2.1's VAE makes 16, Wan 2.2 TI2V's 48),
the text encoder's kind and width against what the transformer attends to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UnsampleError, first_line
from ..protocol import ErrorCode
from .components import DownloadReport, load_pretrained
from .configs import resolve_config
from .families.detect import seems
from .single_file import is_single_file
from .weights_file import existing_file, file_shapes, read_state_dict

# The VAEs Wan ships, by the latent channels they make: named in a mismatch.
_VAES = {16: "Wan 2.1's VAE (16-channel latents)", 48: "Wan 2.2 TI2V's VAE (48-channel latents)"}
# Wan's transformers by their width, and the diffusers repo with their configs.
_SIZES = {
    1536: ("Wan 2.1 1.3B", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    3072: ("Wan 2.2 TI2V 5B", "Wan-AI/Wan2.2-TI2V-5B-Diffusers"),
    5120: ("Wan 2.1 14B", "Wan-AI/Wan2.1-T2V-14B-Diffusers"),
}
DEFAULT_CONFIG_REPO = _SIZES[1536][1]


@dataclass
class WanComponents:
    tokenizer: Any
    text_encoder: Any  # UMT5EncoderModel
    transformer: Any  # WanTransformer3DModel: Wan 2.1, or Wan 2.2's high-noise expert
    vae: Any  # AutoencoderKLWan
    transformer_2: Any | None = None  # Wan 2.2 A14B's low-noise expert
    boundary_ratio: float | None = None  # the sigma below which the low-noise expert takes over


def load_wan(
    source: str,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    *,
    vae: str = "",
    config: str = "",
    allow_download: bool = False,
    on_download: DownloadReport | None = None,
) -> WanComponents:
    """The Wan models in ``source`` (a diffusers folder or Hub id, like Wan-AI/Wan2.1-T2V-1.3B-Diffusers),
    with ``vae`` (a folder or Hub id) in place of its own if given; on the CPU, in the given dtypes
    (UMT5 in bfloat16 where float16 is asked for). ``source`` may be a transformer file in Wan's own
    layout: the rest, configs included, then comes from ``config`` (a diffusers folder or Hub id)."""
    from diffusers import AutoencoderKLWan, DiffusionPipeline, WanTransformer3DModel
    from transformers import AutoConfig, AutoTokenizer, UMT5EncoderModel

    def config_of(cls: Any, where: str, subfolder: str | None, role: str) -> Any:
        return load_pretrained(cls, where, subfolder, role, allow_download, "load_config", on_download)

    def model(cls: Any, where: str, subfolder: str | None, role: str, **kwargs: Any) -> Any:
        return load_pretrained(cls, where, subfolder, role, allow_download, on_download=on_download, **kwargs)

    transformer_file = source if is_single_file(source) else ""
    if transformer_file:
        # Its configs alone (a few kB, never the repo's own transformer weights); the other parts from
        # the same folder or repo, as models.
        width = _file_width(transformer_file)
        source = config or _SIZES.get(width, (None, DEFAULT_CONFIG_REPO))[1]
        role = f"transformer {transformer_file}"
        configs = resolve_config(source, source, role, allow_download, ["transformer/config.json"])
        transformer_config = WanTransformer3DModel.load_config(str(configs), subfolder="transformer")
        _check_width(transformer_file, width, str(configs), transformer_config)  # before any weights load
    else:
        configs = None
        transformer_config = config_of(WanTransformer3DModel, source, "transformer", "transformer")
    vae_source, vae_subfolder = (vae, None) if vae else (source, "vae")
    index = config_of(DiffusionPipeline, source, None, "checkpoint")
    check_vae(vae or source, config_of(AutoencoderKLWan, vae_source, vae_subfolder, "VAE"), source, transformer_config)
    encoder_config = load_pretrained(
        AutoConfig, source, "text_encoder", "text encoder", allow_download, on_download=on_download
    )
    check_text_encoder(source, encoder_config, transformer_config)

    # T5's feed-forward activations overflow float16 (the reason T5 models ship in bfloat16).
    text_dtype = torch.bfloat16 if dtype == torch.float16 else dtype
    second = index.get("transformer_2")
    has_second = isinstance(second, list | tuple) and second[0] is not None
    return WanComponents(
        tokenizer=model(AutoTokenizer, source, "tokenizer", "tokenizer"),
        text_encoder=model(UMT5EncoderModel, source, "text_encoder", "text encoder", torch_dtype=text_dtype).eval(),
        transformer=(
            _transformer_from_file(transformer_file, str(configs), dtype)
            if transformer_file
            else model(WanTransformer3DModel, source, "transformer", "transformer", torch_dtype=dtype)
        ).eval(),
        vae=model(AutoencoderKLWan, vae_source, vae_subfolder, "VAE", torch_dtype=vae_dtype).eval(),
        transformer_2=(
            model(WanTransformer3DModel, source, "transformer_2", "transformer", torch_dtype=dtype).eval()
            if has_second
            else None
        ),
        boundary_ratio=index.get("boundary_ratio"),
    )


def check_vae(vae: str, vae_config: Any, checkpoint: str, transformer_config: Any) -> None:
    """The VAE must make the latents the transformer takes."""
    channels, wanted = vae_config.get("z_dim"), transformer_config.get("in_channels")
    if channels is None:  # not a video VAE of Wan's kind at all: SD's AutoencoderKL, say
        kind = vae_config.get("_class_name")
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the VAE {vae} is {'an ' + kind if kind else 'another kind of model'}, not a Wan video VAE "
            f"(AutoencoderKLWan): use {_VAES.get(wanted, 'the VAE of ' + checkpoint)}",
        )
    if channels != wanted:
        made = _VAES.get(channels, f"a VAE of {channels}-channel latents")
        fits = _VAES.get(wanted, f"a VAE of {wanted}-channel latents")
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the VAE {vae} is {made}, but the transformer of {checkpoint} takes {wanted}-channel latents: use {fits}",
        )


def check_text_encoder(checkpoint: str, encoder_config: Any, transformer_config: Any) -> None:
    """Wan's transformers attend to UMT5's states, of the width they were trained with."""
    kind = getattr(encoder_config, "model_type", "unknown")
    if kind != "umt5":
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the text encoder of {checkpoint} is a {kind} model, but Wan's transformer was trained on UMT5's "
            "states: use the text encoder Wan ships (google/umt5-xxl, as in Wan-AI/Wan2.1-T2V-1.3B-Diffusers)",
        )
    width, wanted = encoder_config.d_model, transformer_config.get("text_dim")
    if width != wanted:
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the text encoder of {checkpoint} gives {width}-wide states, but its transformer attends to "
            f"{wanted}-wide ones: the two come from different models",
        )


def _file_width(path: str) -> int:
    """A Wan transformer file's width (its patch embedding's output channels), from its names and
    shapes; anything else is refused, saying what it seems to be."""
    shapes = file_shapes(existing_file(path, "transformer"), "transformer")[0]  # a .safetensors: its header only
    plain = {key.removeprefix("model.diffusion_model."): shape for key, shape in shapes.items()}
    if "head.modulation" not in plain or "patch_embedding.weight" not in plain:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{path} is not a Wan transformer: {seems(shapes)}")
    return plain["patch_embedding.weight"][0]


def _check_width(path: str, width: int, folder: str, transformer_config: Any) -> None:
    """The transformer file must be as wide as the configs it is to be built with."""
    wanted = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    if width != wanted:
        named = _SIZES.get(width, (f"a Wan transformer {width} wide", None))
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the transformer {path} is {named[0]}, but the configs in {folder} are for a {wanted}-wide one: "
            + (f"use the configs of {named[1]} (command line: --config {named[1]})" if named[1] else "name its own"),
        )


def _transformer_from_file(path: str, folder: str, dtype: torch.dtype) -> Any:
    """The transformer in ``path`` (Wan's own layout), converted by diffusers with the configs in ``folder``."""
    from diffusers import WanTransformer3DModel

    state = read_state_dict(path, "transformer")
    try:
        return WanTransformer3DModel.from_single_file(
            state, config=folder, subfolder="transformer", torch_dtype=dtype, local_files_only=True
        )
    except Exception as error:  # diffusers' converter fails by name lookups and shapes, in many classes
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the transformer {path} does not fit the configs in {folder}: {first_line(error)}",
            str(error),
        ) from error
