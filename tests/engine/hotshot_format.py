"""Hotshot-XL's temporal layers in its own key layout, random weights, and its layer math as reference.

Both are written from Hotshot-XL's model code (hotshot_xl/models/transformer_temporal.py and
unet_blocks.py): the names, shapes and computation of ``TransformerTemporal``. They let the tests
check the conversion against Hotshot-XL itself rather than against diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HEADS = 8
GROUPS = 32
TABLE = 24  # its position table's length


def hotshot_state_dict(unet_config: Mapping[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Temporal layers for a UNet of ``unet_config``: one after each ResNet of every down block and up
    block, named ``{down,up}_blocks.B.temporal_attentions.L.*``, as Hotshot-XL's UNet saves them."""
    generator = torch.Generator().manual_seed(seed)
    widths = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    state: dict[str, torch.Tensor] = {}
    for block, width in enumerate(widths):
        for layer in range(layers):
            state |= _temporal_layer(f"down_blocks.{block}.temporal_attentions.{layer}", width, generator)
    for block, width in enumerate(reversed(widths)):
        for layer in range(layers + 1):
            state |= _temporal_layer(f"up_blocks.{block}.temporal_attentions.{layer}", width, generator)
    return state


def write_hotshot_file(path: Path, unet_config: Mapping[str, Any], seed: int = 0) -> Path:
    """The state dict as the ``hsxl_temporal_layers.safetensors`` file users have."""
    from safetensors.torch import save_file

    save_file(hotshot_state_dict(unet_config, seed), str(path))
    return path


def _temporal_layer(prefix: str, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) / math.sqrt(shape[-1])

    def norm(name: str) -> dict[str, torch.Tensor]:
        # Away from 1 and 0 so that a misplaced norm shows.
        return {
            f"{name}.weight": 1 + 0.3 * torch.randn(width, generator=generator),
            f"{name}.bias": 0.3 * torch.randn(width, generator=generator),
        }

    inner = 4 * width  # FeedForward's default mult; GEGLU projects to twice that
    block = f"{prefix}.transformer_blocks.0"
    state = {
        **norm(f"{prefix}.norm"),
        f"{prefix}.proj_in.weight": weight(width, width),
        f"{prefix}.proj_in.bias": 0.1 * torch.randn(width, generator=generator),
        f"{prefix}.proj_out.weight": weight(width, width),  # zero in a fresh Hotshot-XL; trained ones are not
        f"{prefix}.proj_out.bias": 0.1 * torch.randn(width, generator=generator),
        **norm(f"{block}.ff_norm"),
        f"{block}.ff.net.0.proj.weight": weight(2 * inner, width),
        f"{block}.ff.net.0.proj.bias": 0.1 * torch.randn(2 * inner, generator=generator),
        f"{block}.ff.net.2.weight": weight(width, inner),
        f"{block}.ff.net.2.bias": 0.1 * torch.randn(width, generator=generator),
    }
    for attention in (0, 1):
        names = f"{block}.attention_blocks.{attention}"
        state |= {f"{names}.{part}.weight": weight(width, width) for part in ("to_q", "to_k", "to_v", "to_out.0")}
        state[f"{names}.to_out.0.bias"] = 0.1 * torch.randn(width, generator=generator)
        state[f"{names}.pos_encoder.positional_encoding"] = sinusoid_table(width)
        state |= norm(f"{block}.norms.{attention}")
    return state


def sinusoid_table(width: int, length: int = TABLE) -> torch.Tensor:
    """Hotshot-XL's PositionalEncoding buffer: (1, length, width), sin on even channels, cos on odd."""
    position = torch.arange(length).unsqueeze(1)
    rate = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
    table = torch.zeros(1, length, width)
    table[0, :, 0::2] = torch.sin(position * rate)
    table[0, :, 1::2] = torch.cos(position * rate)
    return table


def reference_temporal_layer(state: Mapping[str, torch.Tensor], prefix: str, clip: torch.Tensor) -> torch.Tensor:
    """Hotshot-XL's ``TransformerTemporal`` on ``clip`` (batch, channels, frames, height, width)."""
    b, c, f, h, w = clip.shape
    p = {key[len(prefix) + 1 :]: value for key, value in state.items() if key.startswith(prefix + ".")}

    frames = clip.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # its norm sees one frame at a time
    x = F.group_norm(frames, GROUPS, p["norm.weight"], p["norm.bias"], eps=1e-6)
    x = x.permute(0, 2, 3, 1).reshape(b * f, h * w, c)
    x = F.linear(x, p["proj_in.weight"], p["proj_in.bias"])

    block = "transformer_blocks.0."
    for attention in (0, 1):
        a = f"{block}attention_blocks.{attention}."
        normed = F.layer_norm(x, (c,), p[f"{block}norms.{attention}.weight"], p[f"{block}norms.{attention}.bias"])
        x = x + _temporal_self_attention(normed, p, a, b, f)
    normed = F.layer_norm(x, (c,), p[f"{block}ff_norm.weight"], p[f"{block}ff_norm.bias"])
    hidden, gate = F.linear(normed, p[f"{block}ff.net.0.proj.weight"], p[f"{block}ff.net.0.proj.bias"]).chunk(2, -1)
    x = x + F.linear(hidden * F.gelu(gate), p[f"{block}ff.net.2.weight"], p[f"{block}ff.net.2.bias"])

    x = F.linear(x, p["proj_out.weight"], p["proj_out.bias"])
    x = x.reshape(b * f, h, w, c).permute(0, 3, 1, 2) + frames
    return x.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def _temporal_self_attention(x: torch.Tensor, p: Mapping[str, torch.Tensor], a: str, b: int, f: int) -> torch.Tensor:
    """Attention over frames at each pixel, after adding the position table; 8 heads, no q/k/v bias."""
    bf, s, c = x.shape
    seq = x.reshape(b, f, s, c).permute(0, 2, 1, 3).reshape(b * s, f, c)
    seq = seq + p[f"{a}pos_encoder.positional_encoding"][:, :f]
    q, k, v = (F.linear(seq, p[f"{a}{part}.weight"]) for part in ("to_q", "to_k", "to_v"))
    q, k, v = (t.reshape(b * s, f, HEADS, c // HEADS).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // HEADS), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b * s, f, c)
    out = F.linear(out, p[f"{a}to_out.0.weight"], p[f"{a}to_out.0.bias"])
    return out.reshape(b, s, f, c).permute(0, 2, 1, 3).reshape(bf, s, c)
