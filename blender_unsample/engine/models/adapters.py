"""Merging LoRA adapters into models through a diffusers pipeline's LoRA methods and peft: each file
one adapter, all set to their weights, fused into the weights, the adapter layers taken out again.
Loading changes no weight, so when one file fails to load, taking the adapters out leaves the models
as they were. Shared by the SD LoRAs (lora.py) and Wan's (wan_lora.py)."""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import UnsampleError
from ..protocol import ErrorCode


def weighted(loras: Iterable[tuple[str | os.PathLike[str], float]]) -> Iterator[tuple[Path, float]]:
    """The ``(path, weight)`` pairs to merge: a weight of 0 skips its file, one that is not a finite
    number is refused."""
    for path, weight in loras:
        weight = float(weight)
        if not math.isfinite(weight):
            raise UnsampleError(ErrorCode.BAD_SETTINGS, f"the LoRA {path} has weight {weight}; give a finite number")
        if weight != 0:
            yield Path(path).expanduser(), weight


def merge_adapters(target: Any, weights: Sequence[float], load: Callable[[str, int], None]) -> None:
    """``load(adapter_name, index)`` adds the index-th file's adapter to ``target`` (an object with a
    diffusers pipeline's LoRA methods); then all are merged with ``weights`` and taken out."""
    if importlib.util.find_spec("peft") is None:
        raise UnsampleError(
            ErrorCode.WORKER_SETUP,
            "LoRAs need the Python package peft, which the worker lacks: run Set Up Worker again, "
            "or install peft into the worker's environment",
        )
    names = [f"unsample_{index}" for index in range(len(weights))]
    with warnings.catch_warnings():
        # peft's notes on several adapters in one model, and on removing them again, are expected here.
        warnings.filterwarnings("ignore", "Already found a `peft_config`")
        warnings.filterwarnings("ignore", "Adapter .* was active which is now deleted")
        try:
            for index, name in enumerate(names):
                load(name, index)
        except BaseException:
            target.unload_lora_weights()
            raise
        target.set_adapters(names, list(weights))
        target.fuse_lora(adapter_names=names)
        target.unload_lora_weights()
