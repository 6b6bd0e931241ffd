"""AnimateDiff's motion modules as their weights lay them out, in AnimateDiff's names or diffusers'
(``down_blocks.1.motion_modules.0.temporal_transformer.proj_in.weight`` or without
``temporal_transformer.``): which modules a file has, and the MotionAdapter config they imply."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..errors import UnsampleError
from ..protocol import ErrorCode
from .weights_file import Shapes

# Every AnimateDiff release (v1, v2, v3, SDXL beta) uses these; the weights do not show them.
MOTION_HEADS = 8
MOTION_GROUPS = 32

_MOTION_KEY = re.compile(
    r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.(\d+)\.(?:temporal_transformer\.)?(.+)$"
)


def infer_motion_config(shapes: Shapes) -> dict[str, Any]:
    """A MotionAdapter config read off a motion module's weights, with AnimateDiff's head count and
    norm groups, which the weights do not show."""
    down = motion_modules(shapes, "down_blocks")
    levels = sorted(down)
    widths = [shapes[_motion_key(shapes, f"{block}.motion_modules.0.", "proj_in.weight")][0] for block in levels]
    mid = motion_modules(shapes, "mid_block").get("mid_block", set())
    config: dict[str, Any] = {
        "_class_name": "MotionAdapter",
        "block_out_channels": widths,
        "motion_layers_per_block": len(down[levels[0]]),
        "motion_transformer_layers_per_block": _transformer_layers(shapes, f"{levels[0]}.motion_modules.0."),
        "motion_mid_block_layers_per_block": max(len(mid), 1),
        "motion_num_attention_heads": MOTION_HEADS,
        "motion_norm_num_groups": MOTION_GROUPS,
        "motion_max_seq_length": motion_table_length(shapes) or 32,
        "use_motion_mid_block": bool(mid),
        "conv_in_channels": shapes["conv_in.weight"][1] if "conv_in.weight" in shapes else None,
    }
    if mid:
        config["motion_transformer_layers_per_mid_block"] = _transformer_layers(shapes, "mid_block.motion_modules.0.")
    return config


def motion_modules(shapes: Iterable[str], kind: str) -> dict[str, set[int]]:
    """For each block of ``kind`` (e.g. ``down_blocks.0``), the indices of its motion modules."""
    blocks: dict[str, set[int]] = {}
    for key in shapes:
        match = _MOTION_KEY.match(key)
        if match and match[1].startswith(kind):
            blocks.setdefault(match[1], set()).add(int(match[2]))
    return blocks


def _motion_key(shapes: Shapes, module: str, rest: str) -> str:
    for key in (f"{module}temporal_transformer.{rest}", f"{module}{rest}"):
        if key in shapes:
            return key
    raise UnsampleError(ErrorCode.MODEL_INVALID, f"the motion module has no {module}{rest}")


def _transformer_layers(shapes: Shapes, module: str) -> int:
    """Transformer blocks in one motion module; ``module`` is like ``down_blocks.0.motion_modules.0.``."""
    layers = set()
    for key in shapes:
        match = _MOTION_KEY.match(key)
        inner = re.match(r"transformer_blocks\.(\d+)\.", match[3]) if match else None
        if inner and f"{match[1]}.motion_modules.{match[2]}." == module:
            layers.add(int(inner[1]))
    return len(layers) or 1


def motion_table_length(shapes: Shapes) -> int:
    """Frames the sinusoidal position table covers (24 in AnimateDiff v1, 32 later); 0 if absent."""
    for key, shape in shapes.items():
        if key.endswith(("pos_encoder.pe", "pos_embed.pe")):
            return shape[1]
    return 0
