"""Tiny random LoRA files, written the way kohya-ss and diffusers/PEFT write theirs, for tests.

Names are given by the test, in the file's own spelling, each with the model module it means:
the writer takes that module's shape, so the test states the naming and the loader must agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


@dataclass(frozen=True)
class Update:
    down: torch.Tensor  # (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    alpha: float

    def delta(self) -> torch.Tensor:
        """alpha / rank * up @ down, in float64 and the shape of the adapted weight's kernel."""
        rank = self.down.shape[0]
        product = self.up.double().flatten(1) @ self.down.double().flatten(1)
        return (self.alpha / rank * product).reshape(self.up.shape[0], *self.down.shape[1:])


def random_updates(
    targets: dict[str, nn.Module], rank: int = 2, alpha: float = 1.0, seed: int = 0
) -> dict[str, Update]:
    """One update per name, shaped for its module; a convolution's kernel goes in ``down`` (LoCon)."""
    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for name, module in targets.items():
        out_features, in_features, *kernel = module.weight.shape
        # Large enough to move a tiny model's output, small enough to keep it finite.
        down = torch.randn(rank, in_features, *kernel, generator=generator) * 0.5
        up = torch.randn(out_features, rank, *(1 for _ in kernel), generator=generator) * 0.5
        updates[name] = Update(down, up, alpha)
    return updates


def write_kohya(path: Path, updates: dict[str, Update], dtype: torch.dtype = torch.float16) -> Path:
    """``<name>.lora_down.weight``, ``<name>.lora_up.weight`` and ``<name>.alpha``, as kohya-ss saves."""
    tensors = {}
    for name, update in updates.items():
        tensors[f"{name}.lora_down.weight"] = update.down.to(dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = update.up.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(update.alpha, dtype=dtype)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def write_peft(path: Path, updates: dict[str, Update], lora_alpha: float) -> Path:
    """``<component>.<module>.lora_A.weight`` and ``lora_B.weight``, alpha in the header as diffusers does."""
    tensors = {}
    components = {name.split(".", 1)[0] for name in updates}
    for name, update in updates.items():
        tensors[f"{name}.lora_A.weight"] = update.down.float().contiguous()
        tensors[f"{name}.lora_B.weight"] = update.up.float().contiguous()
    settings = {f"{c}.lora_alpha": lora_alpha for c in components} | {f"{c}.r": 2 for c in components}
    # As diffusers saves a LoraConfig: the modules by their names inside the component.
    for c in components:
        settings[f"{c}.target_modules"] = sorted(n.split(".", 1)[1] for n in updates if n.startswith(f"{c}."))
    save_file(tensors, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(settings)})
    return path


def rounded(updates: dict[str, Update], dtype: torch.dtype = torch.float16) -> dict[str, Update]:
    """The updates as they read back from a file saved in ``dtype``."""
    return {
        name: Update(u.down.to(dtype).float(), u.up.to(dtype).float(), float(torch.tensor(u.alpha, dtype=dtype)))
        for name, u in updates.items()
    }
