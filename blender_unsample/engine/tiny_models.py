"""Tiny random-weight models with the real architectures, saved in the real on-disk layouts.

Tests and the offline demo (``build.py demo --tiny``) load these through exactly the code that
loads a real Stable Diffusion checkpoint, so every loading and pipeline path runs without a
download. Their pictures are noise: the weights are untrained.

Shapes keep what tells the families apart: an SD 1.5 UNet has two levels here and a plain
prompt; an SDXL UNet three levels, two text encoders and pooled/size conditioning (``text_time``).
A 4-level VAE keeps the real 8x pixel-to-latent ratio. Wan 2.1's folder (``build_tiny_wan``) has its
transformer, its causal video VAE (8x in space, 4x in time) and a UMT5 text encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

VAE_CHANNELS = (8, 16, 16, 16)
TEXT_DIM = 32
GROUPS = 8
MAX_TOKENS = 77
FAMILIES = ("sd15", "sdxl")


@dataclass(frozen=True)
class TinyModels:
    """Paths of a tiny model set, laid out like the Hugging Face repos they stand in for."""

    family: str
    checkpoint: Path  # like stable-diffusion-v1-5/stable-diffusion-v1-5
    motion_adapter: Path  # like guoyww/animatediff-motion-adapter-v1-5-2
    controlnet: Path  # like lllyasviel/control_v11p_sd15_canny


def build_tiny_models(root: Path | str, family: str = "sd15", seed: int = 0, width: int = 1) -> TinyModels:
    """Build (or reuse) the tiny model set of ``family`` under ``root``. ``width`` multiplies the
    UNet's channels (benchmarks want a UNet call that costs tens of milliseconds)."""
    if family not in FAMILIES:
        raise ValueError(f"no tiny models for family {family!r}; use one of {FAMILIES}")
    folder = Path(root) / (family if width == 1 else f"{family}-x{width}")
    models = TinyModels(family, folder / "checkpoint", folder / "motion_adapter", folder / "controlnet")
    if (folder / "complete").exists():
        return models
    from diffusers import ControlNetModel, MotionAdapter

    torch.manual_seed(seed)
    sdxl = family == "sdxl"
    unet = _unet(sdxl, width)
    channels = unet.config.block_out_channels
    adapter = MotionAdapter(
        block_out_channels=channels,
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=GROUPS,
        motion_max_seq_length=32,
        use_motion_mid_block=not sdxl,  # AnimateDiff's SDXL module has none
    )
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    _make_controlnet_steer(controlnet)

    unet.save_pretrained(models.checkpoint / "unet")
    _vae(sdxl).save_pretrained(models.checkpoint / "vae")
    _scheduler().save_pretrained(models.checkpoint / "scheduler")
    _write_text_encoders(models.checkpoint, sdxl)
    _write_model_index(models.checkpoint, sdxl)
    adapter.save_pretrained(models.motion_adapter)
    controlnet.save_pretrained(models.controlnet)
    (folder / "complete").write_text("tiny random-weight models; their output is noise\n")
    return models


def _unet(sdxl: bool, width: int) -> Any:
    from diffusers import UNet2DConditionModel

    if not sdxl:
        return UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32 * width, 64 * width),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=4,
            norm_num_groups=GROUPS,
        )
    # SDXL: the two encoders' states side by side; pooled text and six size numbers added to time.
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32 * width, 64 * width, 64 * width),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TEXT_DIM,
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=TEXT_DIM + 6 * 8,
        norm_num_groups=GROUPS,
    )


def _vae(sdxl: bool) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=GROUPS,
        sample_size=64,
        # The real families' scaling; SDXL's VAE overflows in fp16 and asks to run in fp32.
        scaling_factor=0.13025 if sdxl else 0.18215,
        force_upcast=sdxl,
    )


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    # Both families' own training schedule and prediction type.
    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon"
    )


def _write_text_encoders(checkpoint: Path, sdxl: bool) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab_size = _write_byte_level_tokenizer(checkpoint / "tokenizer", pad="<|endoftext|>")
    config = dict(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(CLIPTextConfig(**config)).save_pretrained(checkpoint / "text_encoder")
    if sdxl:
        # SDXL's second encoder pads with "!" and also returns a projected, pooled embedding.
        _write_byte_level_tokenizer(checkpoint / "tokenizer_2", pad="!")
        CLIPTextModelWithProjection(CLIPTextConfig(**config)).save_pretrained(checkpoint / "text_encoder_2")


def _make_controlnet_steer(controlnet: Any) -> None:
    """A new ControlNet's output convolutions start at zero (it adds nothing until trained), and
    its hint encoder's default init is dominated by biases; give both random weights so the tiny
    one visibly follows its hint, as a trained one does."""
    for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
        torch.nn.init.normal_(conv.weight, std=0.05)
    for conv in controlnet.controlnet_cond_embedding.modules():
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(conv.weight)
            torch.nn.init.zeros_(conv.bias)


def _write_byte_level_tokenizer(folder: Path, pad: str) -> int:
    """A CLIP byte-level BPE vocabulary of single bytes (no merges), written as CLIP ships it."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_TOKENS,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad,
        "unk_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _write_model_index(folder: Path, sdxl: bool) -> None:
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }
    if sdxl:
        index |= {
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": True,
        }
    else:
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


# --- Wan 2.1 (flow matching): a text-to-video transformer, its causal video VAE and UMT5 -------------

WAN_TEXT_DIM = 32
WAN_LATENT_CHANNELS = 16


def build_tiny_wan(root: Path | str, seed: int = 0) -> Path:
    """Build (or reuse) a tiny Wan 2.1 text-to-video folder under ``root``, laid out like
    Wan-AI/Wan2.1-T2V-1.3B-Diffusers (diffusers' WanPipeline loads it as it is); returns the folder.
    The VAE keeps Wan's 8x in space and 4x in time, the transformer its 2x2 patches."""
    from diffusers import UniPCMultistepScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(root) / "wan"
    if (folder / "complete").exists():
        return folder
    torch.manual_seed(seed)
    vocab_size = _write_unigram_tokenizer(folder / "tokenizer")
    UMT5EncoderModel(
        UMT5Config(
            vocab_size=vocab_size,
            d_model=WAN_TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    ).save_pretrained(folder / "text_encoder")
    tiny_wan_transformer().save_pretrained(folder / "transformer")
    tiny_wan_vae().save_pretrained(folder / "vae")
    # The scheduler Wan's repos ship; Unsample samples with its own (schedules.flow).
    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    ).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "WanPipeline",
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "boundary_ratio": None,
        "expand_timesteps": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    (folder / "complete").write_text("tiny random-weight models; their output is noise\n")
    return folder


def tiny_wan_transformer(**changes: Any) -> Any:
    """Wan 2.1's transformer class, tiny: 2 layers of 2 heads of 12, 16 latent channels, 2x2 patches;
    ``changes`` to its config (e.g. VACE's layers, with WanVACETransformer3DModel's extra arguments)."""
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=WAN_LATENT_CHANNELS,
        out_channels=WAN_LATENT_CHANNELS, text_dim=WAN_TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )  # fmt: skip
    cls = WanVACETransformer3DModel if "vace_layers" in changes else WanTransformer3DModel
    return cls(**{**config, **changes}).eval()


def tiny_wan_vae() -> Any:
    """Wan 2.1's causal video VAE class, tiny: 16 latent channels, 8x in space, 4x in time."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3, z_dim=WAN_LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()  # fmt: skip


def _write_unigram_tokenizer(folder: Path) -> int:
    """A SentencePiece-style unigram vocabulary of single characters (UMT5's kind, as tokenizer.json:
    loading it needs neither sentencepiece nor a download), with T5's <pad>, </s> and <unk>."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    pieces += [("▁" + c, -2.5) for c in string.ascii_lowercase]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(
        tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0
    )
    fast.save_pretrained(folder)
    return len(pieces)
