"""Settings saved with the scene, and run-time job state kept on the window manager (never saved).

Defaults, limits and tooltips of every setting that the worker also knows come from the
worker's own :class:`JobSpec` fields, so Blender and the command line cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import bpy

from ..engine.protocol import DEFAULT_MODELS, FAMILIES, FAMILY_DESCRIPTIONS, FAMILY_NAMES, NATIVE_SIZE, JobSpec

_FIELDS = {f.name: f for f in dataclasses.fields(JobSpec)}
_INT_MAX = 2**31 - 1

_LABELS = {
    "euler": ("Euler", "First order; the method's reference sampler"),
    "dpmpp_2m": ("DPM++ 2M", "Second order multistep: a closer round trip at the same cost"),
    "ays": ("Align Your Steps", "NVIDIA's optimised schedule for the model family"),
    "karras": ("Karras", "Karras et al. (2022), rho 7"),
    "exponential": ("Exponential", "Evenly spaced in log sigma"),
    "normal": ("Normal", "Evenly spaced training timesteps"),
    "pyramid": ("Pyramid", "Each window's middle frames weigh most: smooth seams"),
    "flat": ("Flat", "Every frame of a window weighs the same"),
    "none": ("None", "No ControlNet"),
    "canny": ("Canny Edges", "Keep the source's edges"),
    "tile": ("Tile", "Keep the source's colours and layout"),
}
# The family menu's entries come with the families' shared facts: adding a family touches nothing here.
_LABELS |= {name: (FAMILY_NAMES[name], f"{FAMILY_DESCRIPTIONS[name]}; {NATIVE_SIZE[name]} px") for name in FAMILIES}


def spec_property(name: str, label: str, **extra: object) -> object:
    """A Blender property mirroring the JobSpec field ``name``."""
    spec_field = _FIELDS[name]
    meta, default = spec_field.metadata, spec_field.default
    description = meta["help"]
    common = {"name": label, "description": description, **extra}
    if "choices" in meta:
        items = [(c, *_LABELS.get(c, (c, ""))) for c in meta["choices"]]
        return bpy.props.EnumProperty(items=items, default=default, **common)
    if isinstance(default, bool):
        return bpy.props.BoolProperty(default=default, **common)
    if isinstance(default, int):
        limits = {"min": meta["low"], "max": min(meta["high"], _INT_MAX)}
        return bpy.props.IntProperty(default=default, **limits, **common)
    if isinstance(default, float):
        limits = {"min": meta["low"], "max": meta["high"]}
        return bpy.props.FloatProperty(default=default, **limits, **common)
    return bpy.props.StringProperty(default=default or "", **common)


class UnsampleLora(bpy.types.PropertyGroup):
    """One LoRA file in the list, merged into the UNet and text encoders with its weight."""

    path: bpy.props.StringProperty(name="LoRA", description="A LoRA .safetensors file", subtype="FILE_PATH")
    weight: bpy.props.FloatProperty(
        name="Weight", description="How strongly the LoRA applies (0 leaves it out)", default=1.0,
        min=-4.0, max=4.0, soft_min=0.0, soft_max=1.5,
    )  # fmt: skip
    enabled: bpy.props.BoolProperty(name="Use", description="Merge this LoRA", default=True)


class UnsampleSettings(bpy.types.PropertyGroup):
    """Everything a restyle needs from the user, stored in the scene (``scene.unsample``)."""

    # Models
    family: spec_property("family", "Model Family")
    checkpoint: bpy.props.StringProperty(
        name="Checkpoint",
        description=(
            "Diffusers folder or Hugging Face id. Empty: the family's default ("
            + " / ".join(models.checkpoint for models in DEFAULT_MODELS.values())
            + "). A .safetensors file works too"
        ),
        subtype="FILE_PATH",
    )
    use_motion_module: bpy.props.BoolProperty(
        name="Motion Module",
        description="Keep frames consistent with an AnimateDiff motion module (off: each frame on its own)",
        default=True,
    )
    motion_module: bpy.props.StringProperty(
        name="Motion Module",
        description=(
            "Diffusers folder or Hugging Face id. Empty: the family's default ("
            + " / ".join(models.motion_adapter for models in DEFAULT_MODELS.values())
            + "). AnimateDiff or Hotshot-XL files work too"
        ),
        subtype="FILE_PATH",
    )
    controlnet_model: bpy.props.StringProperty(
        name="ControlNet",
        description="File, diffusers folder or Hugging Face id. Empty: the family's ControlNet for the hint",
        subtype="FILE_PATH",
    )
    vae: bpy.props.StringProperty(
        name="VAE",
        description="A separate VAE: file, diffusers folder or Hugging Face id. Empty: the checkpoint's own",
        subtype="FILE_PATH",
    )
    config: bpy.props.StringProperty(
        name="Configs",
        description=(
            "For a single-file checkpoint: a diffusers folder or Hugging Face id with its configs. Empty: the "
            "family's reference model in the Hugging Face cache"
        ),
        subtype="DIR_PATH",
    )
    loras: bpy.props.CollectionProperty(type=UnsampleLora, name="LoRAs")
    lora_index: bpy.props.IntProperty(name="Active LoRA")

    # Prompts
    prompt: spec_property("prompt", "Style", options={"TEXTEDIT_UPDATE"})
    negative_prompt: spec_property("negative_prompt", "Negative")
    # Describing the source is the default: that prompt stays put while the style changes, so each
    # new style reuses the cached unsample pass. The numbers keep scenes saved before (SAME 0,
    # BLANK 1, CUSTOM 2) on the choice they had.
    unsample_prompt_mode: bpy.props.EnumProperty(
        name="Unsample With",
        items=[
            (
                "SOURCE", "Describe Source", "Unsample with a description of the footage that stays put while you "
                "try styles: each new style reuses the cached unsample pass. Empty: a blank prompt", "NONE", 2,
            ),
            (
                "SAME", "Same as Style", "Unsample with the style prompt: the closest round trip, but each new "
                "style prompt unsamples again", "NONE", 0,
            ),
            ("BLANK", "Blank", "Unsample with an empty prompt: each new style reuses the cached unsample pass",
             "NONE", 1),
        ],
        default="SOURCE",
    )  # fmt: skip
    unsample_prompt: bpy.props.StringProperty(
        name="Source",
        description=(
            "What the footage shows (e.g. a woman walking in a park), for the unsample pass; it stays put while "
            "the style changes. Empty: a blank prompt"
        ),
    )

    # Sampling
    steps: spec_property("steps", "Steps")
    sampler: spec_property("sampler", "Sampler")
    scheduler: spec_property("scheduler", "Schedule")
    cfg: spec_property("cfg", "Style CFG")
    unsample_cfg: spec_property("unsample_cfg", "Unsample CFG")
    inversion_refinement: spec_property("inversion_refinement", "Inversion Refinement")
    noise: spec_property("noise", "Fresh Noise", subtype="FACTOR")
    seed: spec_property("seed", "Seed")

    # Control
    control: spec_property("control", "Hint")
    controlnet_strength: spec_property("controlnet_strength", "Strength")
    control_start: spec_property("control_start", "Start", subtype="FACTOR")
    control_end: spec_property("control_end", "End", subtype="FACTOR")

    # Frames
    resolution: bpy.props.EnumProperty(
        name="Resolution",
        items=[
            ("MODEL", "Model", "About the model's native pixel count, in the scene's aspect ratio"),
            ("CUSTOM", "Custom", "A width and height of your own (multiples of 8)"),
        ],
        default="MODEL",
    )
    width: bpy.props.IntProperty(name="Width", default=512, min=64, max=4096, step=8)
    height: bpy.props.IntProperty(name="Height", default=512, min=64, max=4096, step=8)
    context: spec_property("context", "Context")
    overlap: spec_property("overlap", "Overlap")
    fusion: spec_property("fusion", "Blend")
    looped: spec_property("looped", "Loop")
    frame_range: bpy.props.EnumProperty(
        name="Frames",
        items=[
            ("WHOLE", "Whole Strip", "Every frame of the strip, as trimmed"),
            ("PLAYHEAD", "Around Playhead", "One context window of frames around the playhead"),
        ],
        default="WHOLE",
    )


# The scene settings that are job settings under their own name, in the job's field order: job_spec
# copies them, then makes the job's own value of those that need it (model paths resolved against
# the Models Folder, the LoRA list, the processing size, the unsample prompt's mode).
MIRRORED = tuple(f.name for f in dataclasses.fields(JobSpec) if f.name in UnsampleSettings.__annotations__)


# Plain functions, not methods: Blender 4.2's Python module crashes on exit when a registered
# PropertyGroup class has methods.
def processing_size(settings: UnsampleSettings, scene: bpy.types.Scene) -> tuple[int, int]:
    """The size the model works at, multiples of 8."""
    if settings.resolution == "CUSTOM":
        return settings.width // 8 * 8, settings.height // 8 * 8
    return model_size(scene.render.resolution_x / scene.render.resolution_y, NATIVE_SIZE[settings.family])


def job_spec(
    settings: UnsampleSettings,
    frames: str,
    out: str,
    size: tuple[int, int],
    models_folder: str = "",
    **overrides: object,
) -> JobSpec:
    """The worker's job for these settings; model names may be relative to ``models_folder``."""
    values = {
        **{name: getattr(settings, name) for name in MIRRORED},
        "frames": frames,
        "out": out,
        "unsample_prompt": unsample_prompt_for(settings),
        "model": _model_path(settings.checkpoint, models_folder),
        "motion_adapter": _model_path(settings.motion_module, models_folder) if settings.use_motion_module else "none",
        "vae": _model_path(settings.vae, models_folder),
        "controlnet": _model_path(settings.controlnet_model, models_folder),
        "config": _model_path(settings.config, models_folder),
        "loras": [
            f"{_model_path(lora.path, models_folder)}={lora.weight:g}"
            for lora in settings.loras
            if lora.enabled and lora.path and lora.weight != 0
        ],
        "width": size[0],
        "height": size[1],
    }
    return JobSpec(**{**values, **overrides})


def unsample_prompt_for(settings: UnsampleSettings) -> str | None:
    """JobSpec.unsample_prompt for the chosen mode: None reuses the style prompt, "" is blank; an
    empty description is blank too (the cache still pays off, the round trip is a little looser)."""
    if settings.unsample_prompt_mode == "SAME":
        return None
    if settings.unsample_prompt_mode == "BLANK":
        return ""
    return settings.unsample_prompt.strip()


def _model_path(value: str, models_folder: str) -> str:
    """Where a model field points: a path relative to the .blend (//...) made absolute, a name
    found in the Models Folder preference, else the value as typed (a folder or a Hub id)."""
    if value.startswith("//"):
        return bpy.path.abspath(value)
    if value and models_folder:
        candidate = Path(bpy.path.abspath(models_folder)) / value
        if candidate.exists():
            return str(candidate)
    return value


def model_size(aspect: float, native: int) -> tuple[int, int]:
    """Width and height with about ``native`` squared pixels at ``aspect``, multiples of 8."""
    height = math.sqrt(native * native / aspect)
    return max(64, round(aspect * height / 8) * 8), max(64, round(height / 8) * 8)


def _redraw(_self: bpy.types.PropertyGroup, context: bpy.types.Context) -> None:
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in {"SEQUENCE_EDITOR", "STATUSBAR", "PREFERENCES"}:
                area.tag_redraw()


def _status_property(*busy: str) -> object:
    """Where a background task stands: idle, one of its ``busy`` states, or how it ended; the panel
    redraws when it changes."""
    states = ("IDLE", *busy, "FINISHED", "FAILED", "CANCELLED")
    return bpy.props.EnumProperty(items=[(s, s.title(), "") for s in states], default="IDLE", update=_redraw)


def _progress_property() -> object:
    return bpy.props.FloatProperty(min=0.0, max=1.0, subtype="FACTOR", update=_redraw)


class UnsampleSetupState(bpy.types.PropertyGroup):
    """What the panel and the preferences show about Set Up Worker (``window_manager.unsample.setup``)."""

    status: _status_property("RUNNING")
    progress: _progress_property()
    stage: bpy.props.StringProperty(description="What the set-up is doing")
    eta: bpy.props.FloatProperty(default=-1.0, description="Seconds left; -1 while unknown")
    message: bpy.props.StringProperty(description="How the last set-up ended")
    log_path: bpy.props.StringProperty(description="The set-up's log file", subtype="FILE_PATH")


class UnsampleJobState(bpy.types.PropertyGroup):
    """What the panel shows about the running batch (``window_manager.unsample``); not saved."""

    status: _status_property("EXPORTING", "RUNNING")
    progress: _progress_property()
    stage: bpy.props.StringProperty(description="What the worker is doing")
    eta: bpy.props.FloatProperty(default=-1.0, description="Seconds left in this strip; -1 while unknown")
    strip_name: bpy.props.StringProperty()
    strip_index: bpy.props.IntProperty(description="1-based position of the running strip in the batch")
    strip_count: bpy.props.IntProperty()
    frames_done: bpy.props.IntProperty()
    frames_total: bpy.props.IntProperty()
    cluster_strips: bpy.props.IntProperty(description="Strips running at once on the cluster; 0 for one at a time")
    cluster_done: bpy.props.IntProperty(description="Of those, the ones finished (added or failed)")
    message: bpy.props.StringProperty(description="The last result or error")
    log_tail: bpy.props.StringProperty(description="The worker's last lines of log")
    setup: bpy.props.PointerProperty(type=UnsampleSetupState)


classes = (UnsampleLora, UnsampleSettings, UnsampleSetupState, UnsampleJobState)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.unsample = bpy.props.PointerProperty(type=UnsampleSettings)
    bpy.types.WindowManager.unsample = bpy.props.PointerProperty(type=UnsampleJobState)


def unregister() -> None:
    del bpy.types.WindowManager.unsample
    del bpy.types.Scene.unsample
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
