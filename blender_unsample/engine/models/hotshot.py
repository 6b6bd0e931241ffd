"""Hotshot-XL's temporal layers as a diffusers motion adapter, with the norms Hotshot-XL trained with.

Hotshot-XL (hotshotco/Hotshot-XL) is SDXL with one temporal transformer after every ResNet (and its
spatial attention, where the block has one) of every down and up block, none in the mid block: on
SDXL 2 per down level and 3 per up level, 15 in all. Each is AnimateDiff's motion-module layout
under other names (``temporal_attentions.N`` instead of ``motion_modules.N``), 8 heads, GroupNorm
of 32 groups, two self-attentions over frames that each add a fixed sinusoidal table of 24
positions, GEGLU feed-forward. Its weights map one to one onto diffusers' ``MotionAdapter``
(``hotshot_motion_adapter``), but diffusers' motion UNet computes three things differently from
Hotshot-XL's own UNet, and ``hotshot_motion_unet`` puts them back:

- Hotshot-XL's temporal layers take GroupNorm statistics per frame; diffusers' motion modules pool
  them over all frames of the clip.
- Hotshot-XL's ResNet blocks (and the UNet's output norm) get the whole clip as one 5-D tensor, so
  their GroupNorm statistics pool all frames of a clip; diffusers runs them frame by frame.
- ``UNetMotionModel.from_unet2d`` drops SDXL's pooled-text/size embedding weights.

With all three, the result matches Hotshot-XL's own UNet3DConditionModel to float precision.
It was trained on clips of ``HOTSHOT_CONTEXT`` frames; its position table stops at 24.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsampleError, first_line
from ..protocol import ErrorCode
from .add_embedding import copy_add_embedding

if TYPE_CHECKING:
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

HOTSHOT_CONTEXT = 8  # frames per clip in Hotshot-XL's training: its best context window
HOTSHOT_MAX_FRAMES = 24  # length of its sinusoidal position table
HOTSHOT_HEADS = 8  # fixed in its code, not stored in the weights
HOTSHOT_NORM_GROUPS = 32  # its temporal layers' GroupNorm, whatever the UNet's own group count

# Anything before "down_blocks." is a container prefix ("unet.", ...); the spatial weights of a full
# Hotshot-XL UNet file share the file but not the "temporal_attentions" name.
_TEMPORAL_KEY = re.compile(r"(?:^|\.)(down|up)_blocks\.(\d+)\.temporal_attentions\.(\d+)\.(.+)$")
_POSITION_KEY = re.compile(r"^transformer_blocks\.(\d+)\.attention_blocks\.(\d+)\.pos_encoder\.positional_encoding$")
# Hotshot-XL's names inside one temporal transformer -> diffusers' BasicTransformerBlock names.
_RENAMES = (
    (re.compile(r"\.attention_blocks\.0\."), ".attn1."),
    (re.compile(r"\.attention_blocks\.1\."), ".attn2."),
    (re.compile(r"\.norms\.0\."), ".norm1."),
    (re.compile(r"\.norms\.1\."), ".norm2."),
    (re.compile(r"\.ff_norm\."), ".norm3."),
)


def is_hotshot_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True for Hotshot-XL's temporal layers (or a whole Hotshot-XL UNet): ``temporal_attentions``
    with ``attention_blocks`` inside, a name neither AnimateDiff's files nor diffusers' use."""
    return any(_TEMPORAL_KEY.search(key) and ".attention_blocks." in key for key in state_dict)


def hotshot_motion_adapter(
    state_dict: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    motion_module: str = "the Hotshot-XL temporal layers",
    checkpoint: str = "the checkpoint",
) -> MotionAdapter:
    """A diffusers ``MotionAdapter`` holding Hotshot-XL's temporal weights, shaped for ``unet_config``.

    Build the motion UNet with ``hotshot_motion_unet`` (or ``UNetMotionModel.from_unet2d`` followed by
    ``copy_add_embedding`` and ``apply_hotshot_norms``): from_unet2d alone computes the diffusers way.
    """
    from diffusers import MotionAdapter

    converted, positions = _convert(state_dict, motion_module)
    _check_fits(converted, unet_config, motion_module, checkpoint)
    length = _position_length(positions, motion_module)
    with torch.device("meta"):  # no random init of a few hundred million weights about to be replaced
        adapter = MotionAdapter(
            block_out_channels=tuple(unet_config["block_out_channels"]),
            motion_layers_per_block=unet_config["layers_per_block"],
            motion_transformer_layers_per_block=_transformer_layers(converted),
            motion_num_attention_heads=HOTSHOT_HEADS,
            motion_norm_num_groups=HOTSHOT_NORM_GROUPS,
            motion_max_seq_length=length,
            use_motion_mid_block=False,
        )
    converted |= _position_tables(adapter, positions)
    try:
        adapter.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as error:
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"{motion_module} look like Hotshot-XL's but do not load as its temporal layers: {first_line(error)}",
            str(error),
        ) from error
    return adapter


def hotshot_motion_unet(
    unet: UNet2DConditionModel,
    state_dict: Mapping[str, torch.Tensor],
    motion_module: str = "the Hotshot-XL temporal layers",
    checkpoint: str = "the checkpoint",
) -> UNetMotionModel:
    """The SDXL ``unet`` (UNet2DConditionModel) with Hotshot-XL's temporal layers: a ``UNetMotionModel``
    that computes what Hotshot-XL's own UNet computes. Run it on clips of ``HOTSHOT_CONTEXT`` frames."""
    from diffusers import UNetMotionModel

    adapter = hotshot_motion_adapter(state_dict, unet.config, motion_module, checkpoint)
    motion_unet = UNetMotionModel.from_unet2d(unet, adapter)
    copy_add_embedding(unet, motion_unet)
    apply_hotshot_norms(motion_unet)
    return motion_unet


def apply_hotshot_norms(motion_unet: nn.Module) -> None:
    """Make a ``UNetMotionModel`` holding Hotshot-XL weights normalise as Hotshot-XL does: per frame in
    the temporal layers, over the whole clip in the ResNet blocks and the output norm. Idempotent."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    if any(isinstance(module, ClipGroupNorm) for module in motion_unet.modules()):
        return
    clip_norms: list[ClipGroupNorm] = []
    for module in list(motion_unet.modules()):
        if isinstance(module, AnimateDiffTransformer3D):
            _swap_norm(module, "norm", FrameGroupNorm, HOTSHOT_NORM_GROUPS)
        elif isinstance(module, ResnetBlock2D):
            clip_norms += [_swap_norm(module, "norm1", ClipGroupNorm), _swap_norm(module, "norm2", ClipGroupNorm)]
    if isinstance(getattr(motion_unet, "conv_norm_out", None), nn.GroupNorm):
        clip_norms.append(_swap_norm(motion_unet, "conv_norm_out", ClipGroupNorm))
    motion_unet.register_forward_pre_hook(_clip_length_setter(clip_norms), with_kwargs=True)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame, given a clip (batch, channels, frames, height, width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        return super().forward(frames).reshape(b, f, c, h, w).transpose(1, 2)


class ClipGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics over all frames of a clip, given frames stacked batch-major in the
    batch (clip 0's frames, then clip 1's), as diffusers' motion UNet stacks them. ``frames`` is set
    from each call's sample by the hook ``apply_hotshot_norms`` adds to the UNet."""

    frames: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.frames
        if f == 1:
            return super().forward(x)
        if x.shape[0] % f:
            raise ValueError(f"{x.shape[0]} stacked frames do not split into clips of {f}")
        bf, c, h, w = x.shape
        clips = x.reshape(bf // f, f, c, h, w).transpose(1, 2)
        out = F.group_norm(clips, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(bf, c, h, w)


# --- conversion ----------------------------------------------------------------------------------------


def _convert(state_dict: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Hotshot-XL keys -> MotionAdapter keys; position tables come apart, keyed (direction, block,
    layer, transformer block, attention)."""
    converted: dict[str, torch.Tensor] = {}
    positions: dict[tuple[str, int, int, int, int], torch.Tensor] = {}
    for key, tensor in state_dict.items():
        found = _TEMPORAL_KEY.search(key)
        if not found:
            continue  # spatial weights of a full Hotshot-XL UNet: the checkpoint brings its own
        direction, block, layer, rest = found.group(1), int(found.group(2)), int(found.group(3)), found.group(4)
        position = _POSITION_KEY.match(rest)
        if position:
            positions[(direction, block, layer, int(position.group(1)), int(position.group(2)))] = tensor
            continue
        name = "." + rest
        for pattern, replacement in _RENAMES:
            name = pattern.sub(replacement, name)
        converted[f"{direction}_blocks.{block}.motion_modules.{layer}{name}"] = tensor
    if not converted:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{source} hold no Hotshot-XL temporal layers")
    return converted, positions


def _position_length(positions: Mapping[tuple, torch.Tensor], source: str) -> int:
    lengths = {table.shape[1] for table in positions.values()}
    if len(lengths) > 1:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{source} mix position tables of lengths {sorted(lengths)}")
    return lengths.pop() if lengths else HOTSHOT_MAX_FRAMES


def _position_tables(adapter: nn.Module, positions: Mapping[tuple, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One table per transformer block, as diffusers shares it between the block's two attentions:
    Hotshot-XL's own where the file has it (both attentions hold the same sinusoid), else the same
    sinusoid computed here."""
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    tables = {}
    for name, buffer in adapter.named_buffers():
        if not name.endswith(".pos_embed.pe"):
            continue
        found = re.match(r"(down|up)_blocks\.(\d+)\.motion_modules\.(\d+)\.transformer_blocks\.(\d+)\.", name)
        where = (found.group(1), *(int(found.group(i)) for i in (2, 3, 4)))
        own = [positions[(*where, attention)] for attention in (0, 1) if (*where, attention) in positions]
        if len(own) == 2 and not torch.equal(own[0], own[1]):
            raise UnsampleError(
                ErrorCode.MODEL_INVALID, f"two different position tables in {name}: diffusers holds only one"
            )
        tables[name] = own[0] if own else SinusoidalPositionalEmbedding(buffer.shape[2], buffer.shape[1]).pe
    return tables


def _transformer_layers(converted: Mapping[str, torch.Tensor]) -> int:
    found = (re.search(r"\.transformer_blocks\.(\d+)\.", key) for key in converted)
    return 1 + max((int(match.group(1)) for match in found if match), default=0)


# --- fit ---------------------------------------------------------------------------------------------


def _check_fits(
    converted: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any], source: str, checkpoint: str
) -> None:
    """Levels, widths and layers per level must be the UNet's: Hotshot-XL is made for SDXL's."""
    widths, layers = _layout(converted, "down")
    up_widths, up_layers = _layout(converted, "up")
    unet_widths = tuple(unet_config["block_out_channels"])
    unet_layers = unet_config["layers_per_block"]
    if isinstance(unet_layers, int):
        unet_layers = (unet_layers,) * len(unet_widths)
    fits = (
        widths == unet_widths
        and layers == tuple(unet_layers)
        and up_widths == unet_widths[::-1]
        and up_layers == tuple(n + 1 for n in unet_layers)[::-1]
        and all(width % HOTSHOT_NORM_GROUPS == 0 for width in widths)
    )
    if not fits:
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"{source} are Hotshot-XL, made for SDXL ({_describe(widths, layers)}), but the checkpoint "
            f"{checkpoint} is {_family(unet_config)} ({_describe(unet_widths, tuple(unet_layers))}): "
            "Hotshot-XL needs an SDXL checkpoint",
        )


def _layout(converted: Mapping[str, torch.Tensor], direction: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per block: the temporal layers' width (from proj_in) and how many temporal layers it has."""
    widths: dict[int, int] = {}
    layers: dict[int, set[int]] = {}
    for key, tensor in converted.items():
        found = re.match(rf"{direction}_blocks\.(\d+)\.motion_modules\.(\d+)\.proj_in\.weight$", key)
        if found:
            block, layer = int(found.group(1)), int(found.group(2))
            widths.setdefault(block, tensor.shape[1])
            layers.setdefault(block, set()).add(layer)
    blocks = sorted(widths)
    return tuple(widths[b] for b in blocks), tuple(len(layers[b]) for b in blocks)


def _family(unet_config: Mapping[str, Any]) -> str:
    # SDXL's UNet adds pooled text and image sizes to its time embedding; SD 1.x/2.x's do not.
    return "SDXL" if unet_config.get("addition_embed_type") == "text_time" else "SD 1.5/2.x"


def _describe(widths: tuple[int, ...], layers: tuple[int, ...]) -> str:
    return f"{len(widths)} levels, widths {list(widths)}, {list(layers)} layers per level"


# --- norms -------------------------------------------------------------------------------------------

_Norm = TypeVar("_Norm", bound=nn.GroupNorm)


def _swap_norm(owner: nn.Module, name: str, cls: type[_Norm], groups: int | None = None) -> _Norm:
    old: nn.GroupNorm = getattr(owner, name)
    new = cls(
        groups or old.num_groups,
        old.num_channels,
        eps=old.eps,
        affine=old.affine,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    new.load_state_dict(old.state_dict())
    setattr(owner, name, new)
    return new


def _clip_length_setter(norms: list[ClipGroupNorm]) -> Callable[..., None]:
    def set_clip_length(module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        frames = sample.shape[2] if sample.ndim == 5 else 1
        for norm in norms:
            norm.frames = frames

    return set_clip_length
