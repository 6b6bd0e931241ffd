"""LoRA files merged into a loaded UNet and text encoders, by diffusers and peft.

Each file becomes a peft adapter through diffusers' loaders; ``fuse_lora`` adds
``weight * alpha / rank * up @ down`` into the weights and ``unload_lora_weights`` removes the
adapter layers, so a merged LoRA costs nothing per step. Merged before the motion module is
attached, it is carried into the motion UNet, which copies the image UNet's weights.

What is ours is what diffusers lacks: every file is read and checked (family, names, shapes)
before any model is touched, so a bad file in the list changes nothing; refusals name the LoRA
and the checkpoint. Names are resolved here too: diffusers' kohya conversion drops original-UNet
names in a file that also has diffusers names, misplaces SD 1.x upsamplers, reads alpha 0 as "no
update" (kohya-ss: the rank) and merges DoRA files without their magnitudes. Layouts:

- kohya-ss: ``lora_unet_<module>.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``, the module
  path with underscores, in diffusers' names (kohya's SD 1.x) or the original UNet's
  (``input_blocks_4_1_...``, kohya's SDXL); text encoders ``lora_te_`` or ``lora_te1_``/``lora_te2_``.
- diffusers/PEFT: ``unet.<module>.lora_A.weight`` and ``lora_B.weight`` (also ``text_encoder.``,
  ``text_encoder_2.``), alphas in the header's ``lora_adapter_metadata`` (handed to diffusers) or
  per-module ``.alpha`` tensors; without either, alpha equals the rank.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UnsampleError
from ..protocol import ErrorCode
from .adapters import merge_adapters, weighted
from .families import detect
from .weights_file import inaccessible

log = logging.getLogger(__name__)

# How a file names the two halves of an update and its alpha; anything else is left out.
_ROLES = {
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".alpha": "alpha",
}
_KOHYA_COMPONENTS = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
_PEFT_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_TEXT_ROLES = ("lora_linear_layer.down", "lora_linear_layer.up")
# LyCORIS kinds other than plain LoRA/LoCon: named in the message when a file has only these.
_OTHER_KINDS = {"hada_": "LoHa", "lokr_": "LoKr", "lora_mid": "LoCon with a Tucker core", ".diff": "full-weight diff"}

# Module names in Stability's original UNet (kohya's SDXL naming), per diffusers block kind.
_SGM_TOP = {
    "conv_in": "input_blocks.0.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_SGM_INNER = {
    "resnet": {
        "conv1": "in_layers.2",
        "conv2": "out_layers.3",
        "time_emb_proj": "emb_layers.1",
        "conv_shortcut": "skip_connection",
    },
    "downsampler": {"conv": "op"},
    "upsampler": {"conv": "conv"},
}
_LISTED = 5  # module names quoted in a warning


@dataclass(frozen=True)
class AppliedLora:
    """What one file did: ``matched`` maps the file's module names to the model's modules."""

    path: Path
    weight: float
    family: str | None  # what its names and shapes say (a key of detect.SIGNATURES); None if they don't tell
    matched: dict[str, str]  # e.g. "lora_unet_input_blocks_4_1_proj_in" -> "unet.down_blocks.1.attentions.0.proj_in"
    left_out: dict[str, str]  # the file's module or key name -> why it was not merged


@dataclass
class LoraReport:
    applied: list[AppliedLora] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # for the caller to show; one per file with left-out keys


@dataclass
class _Update:
    """One low-rank update as the file stores it."""

    name: str  # the file's module name, e.g. "lora_unet_mid_block_attentions_0_proj_in"
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    extras: list[str] = field(default_factory=list)  # further parts (DoRA scale, Tucker core) not merged here

    @property
    def rank(self) -> int:
        assert self.down is not None
        return self.down.shape[0]


@dataclass(frozen=True)
class _Checkpoint:
    """The models a LoRA goes into, as messages name them."""

    family: str  # a key of detect.SIGNATURES: SD 2.x is told apart too, to be refused by name
    path: str = ""

    @property
    def name(self) -> str:
        return f"the checkpoint {self.path}" if self.path else "the checkpoint"

    def __str__(self) -> str:
        return f"{self.name} ({detect.label(self.family)})"


@dataclass
class _Plan:
    """A checked file, in the names and layout diffusers' loaders take (``unet.<module>.lora_A.weight``)."""

    applied: AppliedLora
    tensors: dict[str, torch.Tensor]
    alphas: dict[str, float]  # "<component>.<module>.alpha", where no header metadata gives them
    metadata: dict[str, Any]  # the header's adapter settings, "<component>.<setting>"


def apply_loras(
    loras: Iterable[tuple[str | os.PathLike[str], float]],
    unet: nn.Module,
    text_encoder: nn.Module | None = None,
    text_encoder_2: nn.Module | None = None,
    *,
    checkpoint: str = "",
) -> LoraReport:
    """Merge each ``(path, weight)`` LoRA into the models, in place; a weight of 0 skips the file.

    Call it on the ``UNet2DConditionModel`` before the motion module is attached; ``checkpoint``
    (the models' file or folder) is named in mismatch messages. Raises
    ``UnsampleError``: MODEL_NOT_FOUND (no such file), MODEL_INVALID (unreadable, truncated, not a
    LoRA), MODEL_MISMATCH (made for another model family, or shapes that do not fit), all before
    any weight changes; WORKER_SETUP when peft, which diffusers loads LoRAs with, is missing.
    Modules the model lacks are reported in ``warnings``, unless none fit.
    """
    # 1. Read and check every file before touching any model.
    model = _Checkpoint(detect.unet_family(unet.config), checkpoint)
    modules, aliases = _targets(unet, text_encoder, text_encoder_2)
    plans = [_plan(path, weight, model, modules, aliases) for path, weight in weighted(loras)]
    report = LoraReport()
    if not plans:
        return report
    # 2. diffusers and peft load all of them, then merge them with their weights.
    _fuse(plans, {"unet": unet, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2})
    for plan in plans:
        report.applied.append(plan.applied)
        if plan.applied.left_out:
            report.warnings.append(_left_out_warning(plan.applied))
        log.info(
            "LoRA %s (weight %g): merged %d modules", plan.applied.path, plan.applied.weight, len(plan.applied.matched)
        )
    return report


# --- reading ------------------------------------------------------------------------------------------


def _plan(
    path: Path, weight: float, checkpoint: _Checkpoint, modules: dict[str, nn.Module], aliases: dict[str, str]
) -> _Plan:
    tensors, others, header = _read(path)
    updates, left_out = _group(path, tensors, others)
    family = _check_family(path, updates, checkpoint)
    matched: dict[str, str] = {}
    plan = _Plan(AppliedLora(path, weight, family, matched, left_out), {}, {}, {})
    for update in updates:
        why = _unusable(update)
        target = aliases.get(update.name)
        if why is None and target is None:
            why = "no such module in the checkpoint"
        if why is not None:
            left_out[update.name] = why
            continue
        module = modules[target]
        _check_shape(path, update, target, module, checkpoint)
        matched[update.name] = target
        down, up = _shaped_for(module, update)
        # PEFT's names for the UNet; diffusers' text encoder loader infers the layout from its own
        # (lora_linear_layer) names, which PEFT's names of an MLP-only update do not give it.
        down_name, up_name = ("lora_A", "lora_B") if target.startswith("unet.") else _TEXT_ROLES
        plan.tensors[f"{target}.{down_name}.weight"] = down
        plan.tensors[f"{target}.{up_name}.weight"] = up
        # kohya-ss reads a missing or zero alpha as the rank (scale 1); PEFT keeps it in the header.
        plan.alphas[f"{target}.alpha"] = update.alpha or float(update.rank)
    if not matched:
        raise _nothing_matched(path, updates, left_out, checkpoint)
    plan.metadata = _adapter_metadata(header, matched.values())
    return plan


def _read(path: Path) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """The tensors under LoRA names, the other keys (not loaded: a whole checkpoint given by
    mistake is refused without reading gigabytes), and the header's metadata."""
    if not path.is_file():
        raise UnsampleError(ErrorCode.MODEL_NOT_FOUND, f"the LoRA file {path} does not exist")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            keys = list(file.keys())
            tensors = {key: file.get_tensor(key) for key in keys if _component(key) is not None}
            return tensors, [key for key in keys if key not in tensors], file.metadata() or {}
    except OSError as error:
        raise inaccessible(path, "LoRA", error) from error
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"the LoRA {path} cannot be read as a .safetensors file (damaged, cut short, or another format)",
            str(error),
        ) from error


def _group(path: Path, tensors: dict[str, torch.Tensor], others: list[str]) -> tuple[list[_Update], dict[str, str]]:
    """The file's keys gathered per module; keys of unknown kinds come back as left out."""
    updates: dict[str, _Update] = {}
    unknown = list(others)
    for key, tensor in tensors.items():
        suffix = next((s for s in _ROLES if key.endswith(s)), None)
        if suffix is None or _component(key[: -len(suffix)]) is None:
            unknown.append(key)
            continue
        update = updates.setdefault(key[: -len(suffix)], _Update(key[: -len(suffix)]))
        if _ROLES[suffix] == "alpha":
            update.alpha = _scalar(path, key, tensor)
        else:
            setattr(update, _ROLES[suffix], tensor)
    # A name with only an alpha (as LoHa and LoKr files have) holds no update of ours.
    updates = {name: u for name, u in updates.items() if u.down is not None or u.up is not None}
    left_out = {}
    for key in unknown:
        owner = _owner(key, updates)
        if owner is None:
            left_out[key] = "not a LoRA key this loader knows"
        else:
            # A DoRA scale or a Tucker core changes what down and up mean: never merge them alone.
            owner.extras.append(key[len(owner.name) + 1 :])
    return list(updates.values()), left_out


def _owner(key: str, updates: dict[str, _Update]) -> _Update | None:
    """The update whose module name ``key`` extends, as in "<module>.dora_scale"."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        update = updates.get(".".join(parts[:end]))
        if update is not None:
            return update
    return None


def _scalar(path: Path, key: str, tensor: torch.Tensor) -> float:
    if tensor.numel() != 1 or tensor.dtype == torch.bool or tensor.is_complex():
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"the LoRA {path} is damaged: {key} is not a single number")
    return float(tensor.reshape(()).item())


def _component(name: str) -> str | None:
    """Which model a file's module name belongs to: "unet", "text_encoder" or "text_encoder_2"."""
    for prefix, component in _KOHYA_COMPONENTS.items():
        if name.startswith(prefix):
            return component
    head = name.split(".", 1)[0]
    return head if head in _PEFT_COMPONENTS and "." in name else None


def _unusable(update: _Update) -> str | None:
    if update.down is None or update.up is None:
        return "only one half of the update (lora_down/lora_up) is in the file"
    if update.extras:
        dora = any("dora" in extra or "magnitude" in extra for extra in update.extras)
        kind = "DoRA" if dora else "LyCORIS"
        return f"a {kind} update ({', '.join(update.extras)}), not supported"
    return None


def _adapter_metadata(header: dict[str, str], targets: Collection[str]) -> dict[str, Any]:
    """diffusers' adapter settings from the header, as its loaders take them ({"unet.lora_alpha": 8, ...}),
    for the models they give a rank or alpha for; the adapter goes exactly on the file's modules,
    whatever names (short, or with transformers 4's text_model) the header lists."""
    try:
        flat = json.loads(header.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        return {}
    if not isinstance(flat, dict):
        return {}
    settings: dict[str, Any] = {}
    for component in {target.split(".", 1)[0] for target in targets}:
        own = {key: value for key, value in flat.items() if key.startswith(f"{component}.")}
        if f"{component}.r" in own or f"{component}.lora_alpha" in own:
            modules = sorted(t.split(".", 1)[1] for t in targets if t.startswith(f"{component}."))
            settings |= own | {f"{component}.target_modules": modules}
    return settings


# --- families -----------------------------------------------------------------------------------------


def _check_family(path: Path, updates: list[_Update], checkpoint: _Checkpoint) -> str | None:
    """The LoRA's family where its names and shapes tell it; MODEL_MISMATCH if it is another one."""
    every = set(detect.SIGNATURES)
    families = set(every)
    for update in updates:
        width = update.down.shape[1] if update.down is not None and update.down.dim() >= 2 else None
        families &= detect.lora_families(update.name, _component(update.name), width)
    if not families or families == every:
        return None  # silent or contradicting hints: the shape check against the model decides
    if checkpoint.family in families:
        return checkpoint.family
    named = " or ".join(detect.label(f) for f in sorted(families))
    own = detect.label(checkpoint.family)
    raise UnsampleError(
        ErrorCode.MODEL_MISMATCH,
        f"the LoRA {path} is for {named}, but {checkpoint.name} is {own}: "
        f"pick a LoRA made for {own}, or a checkpoint of the LoRA's family",
    )


# --- the model's names ----------------------------------------------------------------------------------


def _targets(
    unet: nn.Module, text_encoder: nn.Module | None, text_encoder_2: nn.Module | None
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The adaptable modules by model name ("unet.conv_in"), and every file name that means each."""
    # kohya names SD 1.x's one text encoder te, SDXL's two te1 and te2.
    te_prefix = "lora_te1_" if text_encoder_2 is not None else "lora_te_"
    parts = [
        ("unet", unet, "lora_unet_"),
        ("text_encoder", text_encoder, te_prefix),
        ("text_encoder_2", text_encoder_2, "lora_te2_"),
    ]
    modules: dict[str, nn.Module] = {}
    aliases: dict[str, str] = {}
    for component, model, kohya_prefix in parts:
        if model is None:
            continue
        spellings = _unet_spellings(model) if component == "unet" else _text_spellings
        for name, module in _adaptable(model):
            target = f"{component}.{name}"
            modules[target] = module
            for spelling in spellings(name):
                aliases.setdefault(f"{component}.{spelling}", target)  # diffusers/PEFT
                aliases.setdefault(kohya_prefix + spelling.replace(".", "_"), target)
    return modules, aliases


def _unet_spellings(unet: nn.Module) -> Callable[[str], list[str]]:
    originals = _sgm_names(unet)
    return lambda name: [name, originals[name]] if name in originals else [name]


def _text_spellings(name: str) -> list[str]:
    """transformers 5 dropped CLIPTextModel's ``text_model`` wrapper; LoRA files still name it."""
    if name.startswith("text_model.") or name == "text_projection":
        return [name]
    return [name, f"text_model.{name}"]


def _adaptable(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d))


def _sgm_names(unet: nn.Module) -> dict[str, str]:
    """diffusers module name -> its name in Stability's original UNet, derived from the block layout."""
    names = dict(_SGM_TOP)
    for block, original, kind in _sgm_blocks(unet):
        for inner, module in unet.get_submodule(block).named_modules():
            if not isinstance(module, nn.Linear | nn.Conv2d):
                continue
            renamed = inner if kind == "attention" else _SGM_INNER[kind].get(inner)
            if renamed is not None:
                names[f"{block}.{inner}"] = f"{original}.{renamed}"
    return names


def _sgm_blocks(unet: nn.Module) -> Iterable[tuple[str, str, str]]:
    """(diffusers block, original block, kind) for every block of the UNet.

    The original UNet numbers its blocks flat: ``input_blocks.0`` is conv_in, then per level one
    block per layer (resnet at .0, attention at .1) and one for the downsampler; the middle block
    is resnet, attention, resnet; ``output_blocks`` have one block per layer, the upsampler last
    in the level's last block (at .2 behind an attention, else at .1).
    """
    index = 1
    for level, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for layer in range(len(block.resnets)):
            yield f"down_blocks.{level}.resnets.{layer}", f"input_blocks.{index}.0", "resnet"
            if attentions:
                yield f"down_blocks.{level}.attentions.{layer}", f"input_blocks.{index}.1", "attention"
            index += 1
        if getattr(block, "downsamplers", None):
            yield f"down_blocks.{level}.downsamplers.0", f"input_blocks.{index}.0", "downsampler"
            index += 1
    if getattr(unet, "mid_block", None) is not None:
        yield "mid_block.resnets.0", "middle_block.0", "resnet"
        if getattr(unet.mid_block, "attentions", None):
            yield "mid_block.attentions.0", "middle_block.1", "attention"
            yield "mid_block.resnets.1", "middle_block.2", "resnet"
    index = 0
    for level, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        for layer in range(len(block.resnets)):
            yield f"up_blocks.{level}.resnets.{layer}", f"output_blocks.{index}.0", "resnet"
            if attentions:
                yield f"up_blocks.{level}.attentions.{layer}", f"output_blocks.{index}.1", "attention"
            if layer == len(block.resnets) - 1 and getattr(block, "upsamplers", None):
                at = 2 if attentions else 1
                yield f"up_blocks.{level}.upsamplers.0", f"output_blocks.{index}.{at}", "upsampler"
            index += 1


# --- shapes and merging ---------------------------------------------------------------------------------


def _delta_shape(path: Path, update: _Update) -> tuple[int, ...]:
    """The shape of ``up @ down``: (out, in) for a linear update, (out, in, kh, kw) for a convolution."""
    down, up = update.down, update.up
    assert down is not None and up is not None
    well_formed = (
        down.dim() == up.dim()
        and down.dim() in (2, 4)
        and up.shape[1] == down.shape[0] > 0
        and all(size == 1 for size in up.shape[2:])  # LoCon: the kernel is in down, up is 1x1
        and down.is_floating_point()
        and up.is_floating_point()
    )
    if not well_formed:
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"the LoRA {path} is damaged or of an unsupported kind: {update.name} has "
            f"down {tuple(down.shape)} and up {tuple(up.shape)}",
        )
    return (up.shape[0], *down.shape[1:])


def _check_shape(path: Path, update: _Update, target: str, module: nn.Module, checkpoint: _Checkpoint) -> None:
    shape = _delta_shape(path, update)
    weight_shape = tuple(module.weight.shape)
    # A linear update may adapt a 1x1 convolution and the other way round (SD 1.5 vs 2.x proj_in).
    if _squeezed(shape) != _squeezed(weight_shape):
        raise UnsampleError(
            ErrorCode.MODEL_MISMATCH,
            f"the LoRA {path} does not fit {checkpoint}: its update of "
            f"{target} is {shape}, the weight is {weight_shape}; it was made for another model",
        )


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _shaped_for(module: nn.Module, update: _Update) -> tuple[torch.Tensor, torch.Tensor]:
    """down and up in the layout of the adapter peft puts on the module: a convolution's update as
    convolutions (1x1 for a linear update), a linear layer's as matrices (from a 1x1 update)."""
    down, up = update.down, update.up
    assert down is not None and up is not None
    if isinstance(module, nn.Conv2d):
        return down.reshape(*down.shape[:2], *(down.shape[2:] or (1, 1))), up.reshape(*up.shape[:2], 1, 1)
    return down.flatten(1), up.flatten(1)


def _fuse(plans: list[_Plan], models: dict[str, nn.Module | None]) -> None:
    """Each file as one adapter weighted by its weight, all merged (adapters.merge_adapters)."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    class Models(StableDiffusionXLLoraLoaderMixin):
        """A pipeline's LoRA methods (weights, fuse, unload) over our components; None ones are skipped."""

        def __init__(self) -> None:
            self.unet, self.text_encoder, self.text_encoder_2 = models.values()

    target = Models()

    def load(name: str, index: int) -> None:
        for component, model in models.items():
            if model is not None:
                _load(target, component, model, name, plans[index])

    merge_adapters(target, [plan.applied.weight for plan in plans], load)


def _load(target: Any, component: str, model: nn.Module, name: str, plan: _Plan) -> None:
    """One file's adapter into one model, by diffusers' loader for it."""
    tensors = {key: value for key, value in plan.tensors.items() if key.startswith(f"{component}.")}
    if not tensors:
        return
    # The header's settings where diffusers wrote them for this model, else the alphas per module.
    metadata = {k: v for k, v in plan.metadata.items() if k.startswith(f"{component}.")} or None
    options: dict[str, Any] = {
        "network_alphas": None if metadata else plan.alphas,
        "metadata": metadata,
        "adapter_name": name,
        "low_cpu_mem_usage": True,  # as pipeline.load_lora_weights does
    }
    try:
        if component == "unet":
            target.load_lora_into_unet(tensors, unet=model, **options)
        else:
            target.load_lora_into_text_encoder(tensors, text_encoder=model, prefix=component, **options)
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError, TypeError, KeyError) as error:
        # Past our checks, this is a header whose settings do not fit the file's tensors.
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"the LoRA {plan.applied.path} could not be loaded into the {component.replace('_', ' ')}",
            str(error),
        ) from error


# --- messages -------------------------------------------------------------------------------------------


def _nothing_matched(
    path: Path, updates: list[_Update], left_out: dict[str, str], checkpoint: _Checkpoint
) -> UnsampleError:
    if not updates:
        kinds = sorted({kind for key in left_out for marker, kind in _OTHER_KINDS.items() if marker in key})
        what = f"; it holds {', '.join(kinds)} weights, which are not supported" if kinds else ""
        return UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"the LoRA {path} holds no LoRA weights (lora_down/lora_up or lora_A/lora_B){what}",
        )
    reasons = sorted(set(left_out.values()))
    code = ErrorCode.MODEL_MISMATCH if "no such module in the checkpoint" in reasons else ErrorCode.MODEL_INVALID
    return UnsampleError(
        code,
        f"none of the {len(updates)} modules of the LoRA {path} could be merged into {checkpoint}: "
        f"{'; '.join(reasons)}",
        _listing(left_out, limit=50),
    )


def _left_out_warning(applied: AppliedLora) -> str:
    return (
        f"LoRA {applied.path.name}: {len(applied.left_out)} of its entries were left out "
        f"({len(applied.matched)} merged): {_listing(applied.left_out, _LISTED)}"
    )


def _listing(left_out: dict[str, str], limit: int) -> str:
    names = [f"{name} ({why})" for name, why in list(left_out.items())[:limit]]
    more = len(left_out) - limit
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")
