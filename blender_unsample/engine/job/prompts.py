"""Prompts to the conditioning the model attends to: SD 1.5's one CLIP encoder, SDXL's two, Wan's UMT5."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..method.denoisers import Conditioning


def encode_prompt(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    prompt: str,
    device: torch.device,
    size: tuple[int, int],
    warn: Callable[[str], None] | None = None,
    *,
    zeros_if_empty: bool = False,
) -> Conditioning:
    """The conditioning for ``prompt``; ``size`` (width, height) feeds SDXL's size conditioning.

    ``zeros_if_empty``: a blank prompt gives zero states and zero pooled text (the size conditioning
    stays). diffusers' SDXL and AnimateDiff-SDXL pipelines put exactly that in the unconditional
    branch when no negative prompt is given and the model's ``force_zeros_for_empty_prompt`` is set
    (SDXL's trainer zeroes a dropped caption's embeddings rather than encoding "").
    """
    if zeros_if_empty and not prompt.strip():  # CLIP's tokenizer reads a blank prompt as ""
        return _zeros(tokenizers, text_encoders, device, size)
    if len(text_encoders) == 1:
        ids = _token_ids(tokenizers[0], prompt, warn)
        embeds = text_encoders[0](ids.to(device), return_dict=False)[0]
        return Conditioning(embeds.to(torch.float32))
    # SDXL: both encoders' second-to-last hidden states side by side, the second encoder's
    # projected pooled output, and the image size as (height, width, crop top, crop left, height, width).
    states, pooled = [], None
    for index, (tokenizer, encoder) in enumerate(zip(tokenizers, text_encoders, strict=True)):
        ids = _token_ids(tokenizer, prompt, warn if index == 0 else None)
        output = encoder(ids.to(device), output_hidden_states=True)
        states.append(output.hidden_states[-2])
        pooled = output[0]
    return Conditioning(
        torch.cat(states, dim=-1).to(torch.float32),
        {"text_embeds": pooled.to(torch.float32), "time_ids": _time_ids(size, device)},
    )


def _zeros(
    tokenizers: Sequence[Any], text_encoders: Sequence[Any], device: torch.device, size: tuple[int, int]
) -> Conditioning:
    """All-zero conditioning of the shapes the encoders give: one token row per position of the
    first tokenizer, each encoder's hidden width side by side; SDXL's pooled text is the second
    encoder's projection."""
    tokens = tokenizers[0].model_max_length
    width = sum(encoder.config.hidden_size for encoder in text_encoders)
    embeds = torch.zeros(1, tokens, width, dtype=torch.float32, device=device)
    if len(text_encoders) == 1:
        return Conditioning(embeds)
    pooled = torch.zeros(1, text_encoders[-1].config.projection_dim, dtype=torch.float32, device=device)
    return Conditioning(embeds, {"text_embeds": pooled, "time_ids": _time_ids(size, device)})


def _time_ids(size: tuple[int, int], device: torch.device) -> torch.Tensor:
    width, height = size
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device)


def _token_ids(tokenizer: Any, prompt: str, warn: Callable[[str], None] | None) -> torch.Tensor:
    """Token ids padded to the encoder's length; a longer prompt is cut, with a warning."""
    limit = tokenizer.model_max_length
    tokens = tokenizer(prompt, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
    full_length = len(tokenizer(prompt, truncation=False).input_ids)
    if full_length > limit and warn is not None:
        kept = tokenizer.decode(tokens.input_ids[0, 1:-1], skip_special_tokens=True)
        warn(f"prompt is {full_length} tokens, the text encoder takes {limit}: only {kept!r} is used")
    return tokens.input_ids


def encode_t5_prompt(
    tokenizer: Any,
    text_encoder: Any,
    prompt: str,
    device: torch.device,
    max_tokens: int = 512,
    warn: Callable[[str], None] | None = None,
) -> Conditioning:
    """Wan's conditioning: UMT5's last hidden states for the prompt's own tokens, zeros for the
    padding after them, ``max_tokens`` rows (Wan was trained on 512). The text is cleaned as
    diffusers' Wan pipelines clean it (HTML entities, runs of white space)."""
    text = re.sub(r"\s+", " ", html.unescape(html.unescape(prompt)).strip()).strip()
    tokens = tokenizer(
        text, padding="max_length", max_length=max_tokens, truncation=True, add_special_tokens=True,
        return_attention_mask=True, return_tensors="pt",
    )  # fmt: skip
    full_length = len(tokenizer(text, truncation=False).input_ids)
    if full_length > max_tokens and warn is not None:
        warn(f"prompt is {full_length} tokens, the text encoder takes {max_tokens}: the rest is not used")
    mask = tokens.attention_mask.to(device)
    states = text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
    # Positions after the prompt carry zeros, not the encoder's states for padding: as Wan was trained.
    return Conditioning((states * mask.unsqueeze(-1).to(states.dtype)).to(torch.float32))
