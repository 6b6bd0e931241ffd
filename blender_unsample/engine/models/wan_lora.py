"""LoRA files merged into a Wan transformer, by diffusers' Wan LoRA loader and peft.

diffusers reads the layouts Wan LoRAs come in (its own ``transformer.<module>.lora_A/B``, the original
and ComfyUI ``diffusion_model.`` names, musubi-tuner's ``lora_unet_``) and converts them to its own;
each file becomes one peft adapter, all are merged with their weights and the adapter layers taken
out again, so a merged LoRA costs nothing per step. What is ours: every file is read and checked
against the transformer (its modules and shapes) before any weight changes, and a refusal names the
file and why (another model's LoRA, a damaged file, a shape that does not fit).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UnsampleError, first_line
from ..protocol import ErrorCode
from .adapters import merge_adapters, weighted
from .weights_file import read_state_dict

_HALVES = {".lora_A.weight": 1, ".lora_B.weight": 0}  # which dimension of each half meets the module's weight


@dataclass
class _Plan:
    path: Path
    weight: float
    state: dict[str, torch.Tensor]  # in diffusers' names: transformer.<module>.lora_A.weight, ...


def apply_wan_loras(
    loras: Iterable[tuple[str | os.PathLike[str], float]], transformer: Any, checkpoint: str = ""
) -> int:
    """Merge each ``(path, weight)`` LoRA into ``transformer`` in place (a weight of 0 skips the file);
    returns how many were merged. Every file is checked before any is loaded: UnsampleError with
    MODEL_NOT_FOUND, MODEL_INVALID or MODEL_MISMATCH, naming the file; WORKER_SETUP without peft."""
    plans = [_plan(path, weight, transformer, checkpoint or "the Wan transformer") for path, weight in weighted(loras)]
    if plans:
        _fuse(plans, transformer)
    return len(plans)


def _plan(path: Path, weight: float, transformer: Any, checkpoint: str) -> _Plan:
    from diffusers.loaders import WanLoraLoaderMixin

    raw = read_state_dict(path, "LoRA")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # diffusers' note on DoRA scales it leaves out
            state = WanLoraLoaderMixin.lora_state_dict(raw)
    except Exception as error:  # diffusers' converters fail by name lookups and shapes, in many classes
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the LoRA {path} is not a LoRA for Wan: diffusers cannot read its names as Wan's ({first_line(error)})",
            str(error),
        ) from error
    _check_fits(path, state, transformer, checkpoint)
    return _Plan(path, weight, state)


def _check_fits(path: Path, state: dict[str, torch.Tensor], transformer: Any, checkpoint: str) -> None:
    """Every update must name a module of the transformer, and its halves must fit that module's weight."""
    modules = dict(transformer.named_modules())
    halves = [(key, suffix) for key in state for suffix in _HALVES if key.endswith(suffix)]
    if not halves:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"the LoRA {path} holds no LoRA weights (lora_A/lora_B)")
    missing = []
    for key, suffix in halves:
        name = key.removeprefix("transformer.").removesuffix(suffix)
        module = modules.get(name)
        if module is None or not hasattr(module, "weight"):
            missing.append(name)
            continue
        side = _HALVES[suffix]
        if state[key].dim() != 2 or state[key].shape[side] != module.weight.shape[side]:
            raise UnsampleError(
                ErrorCode.MODEL_MISMATCH,
                f"the LoRA {path} does not fit {checkpoint}: its {name} update is {tuple(state[key].shape)}, "
                f"the module's weight {tuple(module.weight.shape)} (a LoRA for another Wan size?)",
            )
    if missing:
        shown = ", ".join(sorted(set(missing))[:3])
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the LoRA {path} names modules {checkpoint} does not have (e.g. {shown}): a LoRA for another model",
        )


def _fuse(plans: list[_Plan], transformer: Any) -> None:
    """Each file as one adapter weighted by its weight, all merged (adapters.merge_adapters)."""
    from diffusers.loaders import WanLoraLoaderMixin

    class Models(WanLoraLoaderMixin):
        """The pipeline's LoRA methods (set, fuse, unload) over our transformer."""

        def __init__(self) -> None:
            self.transformer = transformer

    def load(name: str, index: int) -> None:
        Models.load_lora_into_transformer(plans[index].state, transformer=transformer, adapter_name=name)

    merge_adapters(Models(), [plan.weight for plan in plans], load)
