"""Tiny random-weight models with the real architectures, saved in the real on-disk layouts.

Tests and the offline demo (``build.py demo --tiny``) load these through exactly the code that
loads a real Stable Diffusion checkpoint, so every loading and pipeline path runs without a
download. Their pictures are noise: the weights are untrained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

# Shapes: a 4-level VAE keeps the real 8x pixel-to-latent ratio; two UNet levels keep the
# cross-attention, ResNet, down/up-sampling and motion-module code paths all exercised.
UNET_CHANNELS = (32, 64)
VAE_CHANNELS = (8, 16, 16, 16)
TEXT_DIM = 32
GROUPS = 8
MAX_TOKENS = 77


@dataclass(frozen=True)
class TinyModels:
    """Paths of a tiny model set, laid out like the Hugging Face repos they stand in for."""

    checkpoint: Path  # like stable-diffusion-v1-5/stable-diffusion-v1-5
    motion_adapter: Path  # like guoyww/animatediff-motion-adapter-v1-5-2
    controlnet: Path  # like lllyasviel/control_v11p_sd15_canny


def build_tiny_models(root: Path | str, seed: int = 0) -> TinyModels:
    """Build (or reuse) the tiny SD1.5 model set under ``root``."""
    root = Path(root)
    models = TinyModels(root / "sd15", root / "motion_adapter", root / "controlnet")
    if (root / "complete").exists():
        return models
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        MotionAdapter,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=GROUPS,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=GROUPS,
        sample_size=64,
    )
    tokenizer_dir = models.checkpoint / "tokenizer"
    vocab_size = _write_byte_level_tokenizer(tokenizer_dir)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
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
    )
    # Stable Diffusion 1.5's own training schedule and prediction type.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon"
    )
    adapter = MotionAdapter(
        block_out_channels=UNET_CHANNELS,
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=GROUPS,
        motion_max_seq_length=32,
    )
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    # A new ControlNet's output convolutions start at zero (it adds nothing until trained);
    # give them small random weights so the tiny one visibly steers the UNet, as a trained one does.
    for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
        torch.nn.init.normal_(conv.weight, std=0.05)
    # The hint encoder's default init is dominated by its biases; make its output follow the hint.
    for conv in controlnet.controlnet_cond_embedding.modules():
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(conv.weight)
            torch.nn.init.zeros_(conv.bias)

    unet.save_pretrained(models.checkpoint / "unet")
    vae.save_pretrained(models.checkpoint / "vae")
    text_encoder.save_pretrained(models.checkpoint / "text_encoder")
    scheduler.save_pretrained(models.checkpoint / "scheduler")
    _write_model_index(models.checkpoint)
    adapter.save_pretrained(models.motion_adapter)
    controlnet.save_pretrained(models.controlnet)
    (root / "complete").write_text("tiny random-weight models; their output is noise\n")
    return models


def _write_byte_level_tokenizer(folder: Path) -> int:
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
        "pad_token": "<|endoftext|>",
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


def _write_model_index(folder: Path) -> None:
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
