"""The contract between Blender and the worker: a job spec in, JSON-lines events out.

Imported by both sides, so it imports neither bpy nor torch. The worker reads a :class:`JobSpec`
(a JSON file or command-line flags, both generated from the same fields below) and writes one
event per line on stdout; plain log text goes to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class ModelSet:
    """The models a family uses by default: Hugging Face Hub ids, or local diffusers folders."""

    checkpoint: str
    motion_adapter: str
    controlnets: dict[str, str]  # by control type


DEFAULT_MODELS: dict[str, ModelSet] = {
    "sd15": ModelSet(
        checkpoint="stable-diffusion-v1-5/stable-diffusion-v1-5",
        motion_adapter="guoyww/animatediff-motion-adapter-v1-5-2",
        controlnets={"canny": "lllyasviel/control_v11p_sd15_canny", "tile": "lllyasviel/control_v11f1e_sd15_tile"},
    ),
    "sdxl": ModelSet(
        checkpoint="stabilityai/stable-diffusion-xl-base-1.0",
        motion_adapter="guoyww/animatediff-motion-adapter-sdxl-beta",
        controlnets={"canny": "diffusers/controlnet-canny-sdxl-1.0", "tile": "xinsir/controlnet-tile-sdxl-1.0"},
    ),
}

FAMILIES = tuple(DEFAULT_MODELS)
DEFAULT_FAMILY = FAMILIES[0]
FAMILY_NAMES = {"sd15": "SD 1.5", "sdxl": "SDXL"}  # for people: in messages and menus
FAMILY_DESCRIPTIONS = {  # the family menu's tooltips (the native size is added)
    "sd15": "Stable Diffusion 1.5 with AnimateDiff",
    "sdxl": "Stable Diffusion XL with AnimateDiff SDXL or Hotshot-XL",
}
# A Hugging Face Hub id ("org/name"), as the worker and the add-on tell one from a path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What the worker's Python must have (import names); `doctor` reports on each.
WORKER_PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "accelerate", "numpy", "PIL")
SAMPLERS = ("euler", "dpmpp_2m")
# The samplers whose unsample step can be refined into the exact inverse of their resample step
# (--inversion-refinement): a one-step method has a step-local inverse, a multistep one does not.
REFINABLE_SAMPLERS = ("euler",)
SCHEDULERS = ("ays", "karras", "exponential", "normal")
CONTROLS = ("none", "canny", "tile")
FUSIONS = ("pyramid", "flat")
DEVICES = ("auto", "cuda", "mps", "cpu")
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024}
# What the worker reads as one model file (checkpoint, motion module, ControlNet, VAE); anything
# else is a diffusers folder or a Hub id.
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# The frame files the worker reads. It skips names that start with a dot: a frame still being
# written goes under such a name and is renamed once whole.
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# The latent cache folder holds one file per entry, directly in it, named by its 64-hex-digit key; an
# entry is written under the partial suffix, then renamed. The folder may hold the user's own files
# (`--cache-dir` is theirs to choose): the cache counts, evicts and clears only files that are its
# own by name and, for entries, by their header (one tensor, "latents", with a checksum beside it).
CACHE_ENTRY_SUFFIX = ".safetensors"
CACHE_PARTIAL_SUFFIX = ".partial"
CACHE_ENTRY_TENSOR = "latents"
CACHE_WRITER = "unsample"  # the "written_by" of an entry's metadata (entries before it carry only a checksum)
_CACHE_NAME = re.compile(r"[0-9a-f]{64}")


def cache_files(folder: Path) -> list[Path]:
    """The unsample cache's own files in ``folder``: its entries, and any an interrupted worker left
    half-written. Nothing else there is ever counted or removed."""
    if not folder.is_dir():
        return []
    own = []
    for path in folder.iterdir():
        if not (_CACHE_NAME.fullmatch(path.stem) and path.is_file()):
            continue
        if path.suffix == CACHE_PARTIAL_SUFFIX or (path.suffix == CACHE_ENTRY_SUFFIX and _is_cache_entry(path)):
            own.append(path)
    return own


def _is_cache_entry(path: Path) -> bool:
    """Whether a .safetensors file is one the cache wrote: read from its header alone (pure Python:
    the add-on runs without safetensors)."""
    try:
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little")
            if not 0 < length < 4096:  # an entry's header is a few hundred bytes
                return False
            header = json.loads(file.read(length))
    except (OSError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or set(header) != {CACHE_ENTRY_TENSOR}:
        return False
    written_by = metadata.get("written_by", CACHE_WRITER)
    return written_by == CACHE_WRITER and bool(_CACHE_NAME.fullmatch(str(metadata.get("checksum", ""))))


def default_cache_folder(platform: str = sys.platform, environ: Mapping[str, str] = os.environ) -> Path:
    """Where the command line keeps unsampled latents unless told otherwise: the user's cache folder,
    as the Hugging Face cache does (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches``
    on macOS, ``%LOCALAPPDATA%`` on Windows), under ``unsample/latents``. Blender passes its own."""
    home = Path(environ.get("HOME") or Path.home())
    if platform == "win32":
        base = Path(environ["LOCALAPPDATA"]) if environ.get("LOCALAPPDATA") else home / "AppData" / "Local"
    elif platform == "darwin":
        base = home / "Library" / "Caches"
    else:
        base = Path(environ["XDG_CACHE_HOME"]) if environ.get("XDG_CACHE_HOME") else home / ".cache"
    return base / "unsample" / "latents"


# The stages of a job, in the order it reaches them, as Progress events name them ("download"
# only while models are fetched).
STAGES = ("download", "load", "encode", "unsample", "resample", "decode")
# The keys of the worker's `doctor` report, one JSON object on its last line of output.
DOCTOR_REPORT_KEYS = ("python", "python_version", "packages", "missing", "devices")
# `doctor --cluster ADDRESS` prints {"ok": true, address, nodes, gpus, cpus} or {"ok": false, "error": ...}.
CLUSTER_REPORT_KEYS = ("ok", "address", "nodes", "gpus", "cpus")
CLUSTER_FAILURE_KEYS = ("ok", "error")


class Role(StrEnum):
    """What a job setting acts on. Each JobSpec field declares one; the unsample cache's keys, the
    models a cluster worker keeps and the settings Blender copies from the scene derive from it, so
    a new setting cannot silently leave a stale cache."""

    INPUT = "input"  # the source frames: the cache keys their pixels, not where they lie
    MODELS = "models"  # which weights load and how they compute: both passes change; models reload
    UNSAMPLE = "unsample"  # the unsample pass, and so everything sampled from its noise
    CONTROL_MODEL = "control_model"  # which ControlNet loads
    CONTROL = "control"  # how ControlNet acts: the resample pass (and the unsample pass with control_in_unsample)
    RESAMPLE = "resample"  # the resample pass only: a new value reuses the cached unsample pass
    MEMORY = "memory"  # how the work is split up: the same frames with less memory; models are prepared for it
    FILES = "files"  # where files go and where models may come from: no effect on the frames


# Derived from the roles: what keys the unsampled latents, what the resample pass adds on top of
# them (their cache key), and what a worker that keeps its models must reload for.
UNSAMPLE_ROLES = (Role.MODELS, Role.UNSAMPLE)
RESAMPLE_ROLES = (Role.CONTROL_MODEL, Role.CONTROL, Role.RESAMPLE)
RELOAD_ROLES = (Role.MODELS, Role.CONTROL_MODEL, Role.MEMORY)


def _setting(role: Role, default: Any, help: str, **limits: Any) -> Any:
    return field(default=default, metadata={"help": help, "role": role, **limits})


def parse_lora(item: str) -> tuple[str, float]:
    """``PATH`` or ``PATH=WEIGHT`` (weight 1 by default) as (path, weight); ValueError if malformed."""
    path, separator, weight = item.rpartition("=")
    if not separator:
        return item, 1.0
    try:
        value = float(weight)
    except ValueError:
        value = math.nan
    if not path or not math.isfinite(value):
        raise ValueError(f"not a LoRA entry: {item!r} (expected PATH or PATH=WEIGHT, the weight a number)")
    return path, value


@dataclass
class JobSpec:
    """Every setting of one restyle job. Field metadata drives the CLI flags and the checks."""

    frames: str = _setting(Role.INPUT, "", "folder of input frames (PNG or JPEG, all the same size)")
    out: str = _setting(Role.FILES, "", "folder for the styled frames; each keeps its input file name")
    prompt: str = _setting(Role.RESAMPLE, "", "the style prompt for the resample pass")
    negative_prompt: str = _setting(Role.UNSAMPLE, "", "what to steer away from, in both passes")
    unsample_prompt: str | None = _setting(
        Role.UNSAMPLE, None, "prompt for the unsample pass: omit to reuse the style prompt, '' for blank"
    )
    family: str = _setting(Role.MODELS, DEFAULT_FAMILY, "model family", choices=FAMILIES)
    model: str = _setting(
        Role.MODELS, "", "checkpoint: a diffusers folder, Hub id or .safetensors file (default: the family's)"
    )
    motion_adapter: str = _setting(
        Role.MODELS, "", "AnimateDiff motion module: folder, Hub id or file; 'none' restyles frame by frame"
    )
    vae: str = _setting(Role.MODELS, "", "a separate VAE (folder, Hub id or file); default: the checkpoint's own")
    config: str = _setting(
        Role.MODELS,
        "", "for a single-file checkpoint: a diffusers folder or Hub id with its configs (default: the family's "
        "reference repo in the Hugging Face cache)",
    )  # fmt: skip
    loras: list[str] = field(
        default_factory=list,
        metadata={
            "help": "a LoRA file merged into the UNet and text encoders, as PATH or PATH=WEIGHT; repeat for several",
            "kind": list,
            "flag": "--lora",
            "role": Role.MODELS,
        },
    )
    control: str = _setting(Role.CONTROL_MODEL, "canny", "ControlNet hint computed from each frame", choices=CONTROLS)
    controlnet: str = _setting(
        Role.CONTROL_MODEL, "", "ControlNet model for the hint (default: the family's for that hint)"
    )
    controlnet_strength: float = _setting(
        Role.CONTROL, 0.3, "ControlNet strength; weak keeps the style free", low=0.0, high=2.0
    )
    control_start: float = _setting(
        Role.CONTROL, 0.0, "fraction of the schedule where ControlNet starts", low=0.0, high=1.0
    )
    control_end: float = _setting(
        Role.CONTROL, 0.6, "fraction of the schedule where ControlNet stops", low=0.0, high=1.0
    )
    control_in_unsample: bool = _setting(Role.UNSAMPLE, False, "also apply ControlNet while unsampling")
    steps: int = _setting(Role.UNSAMPLE, 16, "sampling steps, the same for both passes", low=1, high=200)
    sampler: str = _setting(Role.UNSAMPLE, "euler", "convergent sampler for both passes", choices=SAMPLERS)
    scheduler: str = _setting(Role.UNSAMPLE, "ays", "sigma schedule", choices=SCHEDULERS)
    inversion_refinement: int = _setting(
        Role.UNSAMPLE,
        1, "fixed-point iterations per Euler unsample step for a near-exact round trip (one model call each)",
        low=0, high=5,
    )  # fmt: skip
    cfg: float = _setting(Role.RESAMPLE, 2.0, "CFG scale of the resample (style) pass", low=1.0, high=30.0)
    unsample_cfg: float = _setting(Role.UNSAMPLE, 4.0, "CFG scale of the unsample pass", low=1.0, high=30.0)
    noise: float = _setting(
        Role.RESAMPLE, 0.0, "share of fresh seeded noise mixed into the unsampled noise", low=0.0, high=1.0
    )
    seed: int = _setting(Role.RESAMPLE, 0, "seed for --noise", low=0, high=2**63 - 1)
    context: int = _setting(Role.UNSAMPLE, 16, "frames the motion module sees at once (context window)", low=1, high=64)
    overlap: int = _setting(Role.UNSAMPLE, 4, "frames shared by neighbouring context windows", low=0, high=63)
    fusion: str = _setting(Role.UNSAMPLE, "pyramid", "how overlapping windows are blended", choices=FUSIONS)
    looped: bool = _setting(Role.UNSAMPLE, False, "the clip loops: windows wrap from the last frame to the first")
    width: int = _setting(Role.UNSAMPLE, 0, "processing width, a multiple of 8 (0: the frames' own)", low=0, high=4096)
    height: int = _setting(
        Role.UNSAMPLE, 0, "processing height, a multiple of 8 (0: the frames' own)", low=0, high=4096
    )
    device: str = _setting(Role.MODELS, "auto", "compute device", choices=DEVICES)
    vae_batch: int = _setting(
        Role.MEMORY,
        0, "frames per VAE call; 1 is the least memory (0: 8 for SD 1.5, 1 for SDXL's full-precision VAE)",
        low=0, high=64,
    )  # fmt: skip
    vae_tiling: bool = _setting(
        Role.MODELS, False, "encode and decode in tiles of 256 px: for large frames on small GPUs"
    )
    chunk_feed_forward: bool = _setting(
        Role.MEMORY,
        False, "run the UNet's and ControlNet's feed-forward layers a frame at a time: a third less GPU memory "
        "while sampling, a little slower",
    )  # fmt: skip
    cpu_offload: bool = _setting(
        Role.MEMORY,
        False,
        "keep on the GPU only the models of the phase at hand: text encoders, VAE, or UNet and ControlNet",
    )
    allow_download: bool = _setting(Role.FILES, False, "fetch missing models from the Hugging Face Hub")
    work_dir: str = _setting(Role.FILES, "", "folder for intermediate files (default: a temporary folder)")
    cache_dir: str = _setting(
        Role.FILES,
        "", "folder of unsampled latents that later restyles of the same frames and unsample settings reuse "
        "(command line default: the user's cache folder; empty in a job made in code: no cache)",
    )  # fmt: skip
    cache_limit_mb: int = _setting(
        Role.FILES, 4096, "size cap of the cache folder; the least recently used go first", low=0, high=2**20
    )

    def __post_init__(self) -> None:
        defaults = DEFAULT_MODELS.get(self.family)
        if defaults is None:
            return  # validate() names the problem
        self.model = self.model or defaults.checkpoint
        self.motion_adapter = self.motion_adapter or defaults.motion_adapter
        if self.control != "none":
            self.controlnet = self.controlnet or defaults.controlnets[self.control]

    @property
    def uses_motion_module(self) -> bool:
        return self.motion_adapter.lower() != "none"

    @property
    def source_prompt(self) -> str:
        """The prompt the unsample pass conditions on."""
        return self.prompt if self.unsample_prompt is None else self.unsample_prompt

    def validate(self) -> list[str]:
        """Every problem with the settings, as sentences for the user; empty when all is well."""
        problems = []
        for spec in dataclasses.fields(self):
            value, meta = getattr(self, spec.name), spec.metadata
            if "choices" in meta and value not in meta["choices"]:
                problems.append(f"{spec.name} must be one of {', '.join(meta['choices'])}, not {value!r}")
            if "low" in meta and not (isinstance(value, int | float) and math.isfinite(value)):
                problems.append(f"{spec.name} must be a number, not {value!r}")
            elif "low" in meta and not meta["low"] <= value <= meta["high"]:
                problems.append(f"{spec.name} must be between {meta['low']} and {meta['high']}, got {value}")
        if not self.frames:
            problems.append("no input frames folder given")
        if not self.out:
            problems.append("no output folder given")
        if not self.prompt.strip():
            problems.append("the style prompt is empty")
        if self.overlap >= self.context:
            problems.append(f"overlap ({self.overlap}) must be smaller than the context length ({self.context})")
        if self.control_start >= self.control_end and self.control != "none":
            problems.append("control_start must come before control_end")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value and (value < 64 or value % 8):
                problems.append(f"{name} must be 0 or a multiple of 8 of at least 64, got {value}")
        for item in self.loras:
            try:
                parse_lora(item)
            except ValueError as error:
                problems.append(str(error))
        return problems

    @property
    def lora_weights(self) -> list[tuple[str, float]]:
        return [parse_lora(item) for item in self.loras]

    def to_json(self) -> str:
        return json.dumps({"protocol": PROTOCOL_VERSION, **dataclasses.asdict(self)}, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        version = data.pop("protocol", PROTOCOL_VERSION)
        if not _fits(version, int):
            raise ValueError(f"protocol must be the number {PROTOCOL_VERSION}, got {json.dumps(version)}")
        if version != PROTOCOL_VERSION:
            raise ValueError(f"job file is protocol version {version}; this worker speaks {PROTOCOL_VERSION}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown job settings: {', '.join(unknown)}")
        for name, value in data.items():
            meta = known[name].metadata
            if meta.get("kind") is list:
                if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise ValueError(f"job setting {name} must be a list of strings")
                continue
            default = known[name].default
            if value is None and default is None:
                continue  # a setting whose absence means something (unsample_prompt: the style prompt)
            expected = str if default is None else type(default)
            if not _fits(value, expected):
                raise ValueError(f"job setting {name} must be {_KIND_NAMES[expected]}, got {_json_kind(value)}")
        return cls(**data)


def settings_with(*roles: Role) -> tuple[str, ...]:
    """The JobSpec settings of these roles, in field order."""
    return tuple(f.name for f in dataclasses.fields(JobSpec) if f.metadata["role"] in roles)


_KIND_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}


def _json_kind(value: Any) -> str:
    """A value's kind as a job file's author wrote it."""
    if value is None:
        return "null"
    kind = {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list", dict: "an object"}
    return f"{kind.get(type(value), type(value).__name__)} ({json.dumps(value)[:40]})"


def _fits(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


# --- errors ---------------------------------------------------------------------------------------


class ErrorCode(StrEnum):
    """What went wrong, for the user and for scripts: each has its own process exit code."""

    INTERNAL = "internal"
    BAD_SETTINGS = "bad_settings"
    BAD_FRAMES = "bad_frames"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_INVALID = "model_invalid"
    MODEL_MISMATCH = "model_mismatch"
    OUT_OF_MEMORY = "out_of_memory"
    OUTPUT_NOT_WRITABLE = "output_not_writable"
    WORKER_SETUP = "worker_setup"
    DISK_FULL = "disk_full"
    CLUSTER = "cluster"  # a Ray cluster that does not answer, or lost its workers beyond retrying
    OUTPUT_IN_USE = "output_in_use"  # another job is writing the same output folder
    CANCELLED = "cancelled"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]


_EXIT_CODES = {
    ErrorCode.INTERNAL: 1,
    ErrorCode.BAD_SETTINGS: 3,
    ErrorCode.BAD_FRAMES: 4,
    ErrorCode.MODEL_NOT_FOUND: 5,
    ErrorCode.MODEL_INVALID: 6,
    ErrorCode.MODEL_MISMATCH: 7,
    ErrorCode.OUT_OF_MEMORY: 8,
    ErrorCode.OUTPUT_NOT_WRITABLE: 9,
    ErrorCode.WORKER_SETUP: 10,
    ErrorCode.DISK_FULL: 11,
    ErrorCode.CLUSTER: 12,
    ErrorCode.OUTPUT_IN_USE: 13,
    ErrorCode.CANCELLED: 130,
}


# --- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    type: ClassVar[str] = "progress"
    stage: str  # one of STAGES
    step: int  # 1-based within the stage
    total: int  # steps in the stage (frames for encode and decode)
    window: int = 0  # 1-based context window within the step; 0 outside the sampling passes
    windows: int = 0
    frames_done: int = 0  # output frames written so far
    frames_total: int = 0
    fraction: float = 0.0  # of the whole job, 0 to 1
    eta: float | None = None  # seconds left, None until it can be estimated
    job: int = 0  # which job of a batch (0-based, in the order given); 0 for a single job
    jobs: int = 0  # the batch's jobs; 0 for a single job
    batch_fraction: float = 0.0  # of the whole batch, 0 to 1 (a batch only)
    batch_eta: float | None = None  # seconds left for the whole batch (a batch only)


@dataclass(frozen=True)
class FrameWritten:
    type: ClassVar[str] = "frame"
    name: str  # file name inside the output folder
    index: int  # 0-based position in the clip
    job: int = 0


@dataclass(frozen=True)
class WarningEvent:
    type: ClassVar[str] = "warning"
    message: str
    job: int = 0


@dataclass(frozen=True)
class ErrorEvent:
    type: ClassVar[str] = "error"
    code: str
    message: str
    detail: str = ""  # traceback or the underlying library's message
    job: int = 0


@dataclass(frozen=True)
class Done:
    type: ClassVar[str] = "done"
    frames: int
    out: str
    seconds: float
    unsample_cached: bool = False  # the unsampled latents came from the cache: no unsample pass ran
    frames_reused: int = 0  # frames an interrupted run of this same job had already written
    job: int = 0


Event = Progress | FrameWritten | WarningEvent | ErrorEvent | Done
EVENT_TYPES: dict[str, type] = {cls.type: cls for cls in (Progress, FrameWritten, WarningEvent, ErrorEvent, Done)}


def event_to_json(event: Event) -> str:
    return json.dumps({"type": event.type, **dataclasses.asdict(event)}, separators=(",", ":"))


def event_from_json(line: str) -> Event:
    """Parse one event line; anything malformed raises ValueError with the reason."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a JSON event: {line[:80]!r}") from error
    if not isinstance(data, dict) or data.get("type") not in EVENT_TYPES:
        raise ValueError(f"unknown event: {line[:80]!r}")
    cls = EVENT_TYPES[data.pop("type")]
    try:
        event = cls(**data)
    except TypeError as error:
        raise ValueError(f"malformed {cls.type} event: {error}") from error
    if isinstance(event, FrameWritten) and not _is_plain_file_name(event.name):
        # A frame is named inside the output folder; a path could point anywhere.
        raise ValueError(f"malformed frame event: {event.name!r} is not a file name")
    return event


def _is_plain_file_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(separator in name for separator in ("/", "\\", "\0"))
        and ":" not in name  # a Windows drive or stream
    )
