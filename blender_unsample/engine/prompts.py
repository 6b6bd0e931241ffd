"""Prompts to the conditioning the UNet attends to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .denoisers import Conditioning


def encode_prompt(
    tokenizer: Any,
    text_encoder: Any,
    prompt: str,
    device: torch.device,
    warn: Callable[[str], None] | None = None,
) -> Conditioning:
    """CLIP hidden states of ``prompt``, padded to the encoder's length; longer prompts are cut."""
    limit = tokenizer.model_max_length
    tokens = tokenizer(prompt, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
    full_length = len(tokenizer(prompt, truncation=False).input_ids)
    if full_length > limit and warn is not None:
        kept = tokenizer.decode(tokens.input_ids[0, 1:-1], skip_special_tokens=True)
        warn(f"prompt is {full_length} tokens, the text encoder takes {limit}: only {kept!r} is used")
    embeds = text_encoder(tokens.input_ids.to(device), return_dict=False)[0]
    return Conditioning(embeds.to(torch.float32))
