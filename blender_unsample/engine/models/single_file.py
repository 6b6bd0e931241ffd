"""Load single-file models as Civitai and the Hugging Face Hub ship them.

A checkpoint is one ``.safetensors`` (or a ``.ckpt``/``.pt`` pickle, read weights-only: see
weights_file.py) in the layout of the code that trained it: Stable Diffusion's LDM layout for SD 1.5,
SGM's for SDXL, AnimateDiff's for motion modules, ControlNet 1.x's for ControlNets. diffusers' public
``from_single_file`` converts the UNet, VAE, ControlNet and motion module; the text encoders only need
renaming into transformers' names (text_encoders.py). What the file does not hold, the configs, comes
from configs.py; a motion module needs none: its shape is read off its weights (motion_layout.py).
Which family and kind a file is, families/detect.py tells.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import UnsampleError, first_line
from ..protocol import MODEL_FILE_SUFFIXES, ErrorCode
from . import families
from .configs import resolve_config
from .families import detect
from .motion_layout import infer_motion_config
from .text_encoders import clip_model, from_open_clip, is_open_clip
from .weights_file import existing_file, file_shapes, has_prefix, read_state_dict, shapes_of

log = logging.getLogger(__name__)

T = TypeVar("T")

SINGLE_FILE_SUFFIXES = frozenset(MODEL_FILE_SUFFIXES)

_VAE = ("first_stage_model.", "vae.")


@dataclass
class SingleFileCheckpoint:
    """The parts of a whole SD 1.5 or SDXL checkpoint, in diffusers' classes."""

    family: str  # protocol.FAMILIES' key
    tokenizer: Any
    text_encoder: Any
    unet: Any  # UNet2DConditionModel
    vae: Any | None  # AutoencoderKL; None when the file carries no VAE: the caller must bring one
    scheduler: Any  # EulerDiscreteScheduler: its alphas_cumprod and config.prediction_type
    config: Path  # the folder the configs came from
    tokenizer_2: Any | None = None  # SDXL only
    text_encoder_2: Any | None = None  # SDXL only: CLIPTextModelWithProjection


@dataclass
class SingleFileModel:
    """One model from a single file: a MotionAdapter, a ControlNetModel or an AutoencoderKL."""

    model: Any
    family: str
    config: str  # a folder, or a note on where the config came from
    version: str = ""  # motion modules: the AnimateDiff release (a key of Family.motion_releases)


def is_single_file(source: str | Path) -> bool:
    """Whether ``source`` names an existing model file (rather than a diffusers folder or a Hub id)."""
    path = Path(source).expanduser()
    return path.suffix.lower() in SINGLE_FILE_SUFFIXES and path.is_file()


# --- loading --------------------------------------------------------------------------------------


def load_checkpoint(
    path: str | Path,
    config: str | Path | None = None,
    *,
    allow_download: bool = False,
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype | None = None,
) -> SingleFileCheckpoint:
    """A whole SD 1.5 or SDXL checkpoint file, converted by diffusers, configs from ``config`` (a
    diffusers pipeline folder or repo id) or the family's reference repo (see :func:`resolve_config`).

    The family is found from the file's tensor names before anything is loaded, and the configs
    before the weights are read. MODEL_NOT_FOUND: the file or the configs are missing;
    MODEL_INVALID: the file is damaged, unsafe, or not a supported checkpoint; MODEL_MISMATCH: its
    weights do not fit the configs.
    """
    file = existing_file(path, "checkpoint")
    shapes, state = file_shapes(file, "checkpoint")
    family = detect.checkpoint_family(shapes, file.name)
    required = _checkpoint_configs(family)
    repo = families.family(family).checkpoint_config_repo
    folder = resolve_config(config, repo, f"checkpoint {file.name}", allow_download, required)
    state = state if state is not None else read_state_dict(file, "checkpoint")
    log.info("loading %s checkpoint %s with the configs in %s", family, file.name, folder)
    parts = _text_encoders(state, family, folder, file, dtype)
    return SingleFileCheckpoint(
        family=family,
        unet=_unet(state, folder, file, dtype),
        vae=_checkpoint_vae(state, folder, file, vae_dtype or dtype),
        scheduler=_scheduler(folder, "v_pred" in state),
        config=folder,
        **parts,
    )


def load_motion_module(
    path: str | Path,
    config: str | Path | None = None,
    *,
    allow_download: bool = False,
    dtype: torch.dtype = torch.float32,
) -> SingleFileModel:
    """An AnimateDiff motion module (v1, v2, v3 or SDXL; AnimateDiff's layout or diffusers') as a
    MotionAdapter. ``config`` (a folder or repo id with its config.json) is optional: without it the
    config is read off the weights (:func:`infer_motion_config`)."""
    from diffusers import MotionAdapter

    file = existing_file(path, "motion module")
    state = read_state_dict(file, "motion module")
    shapes = shapes_of(state)
    family, version = detect.motion_module_family(shapes, file.name)
    with tempfile.TemporaryDirectory(prefix="unsample-motion-") as scratch:
        if config:
            role, example = f"motion module {file.name}", families.family(family).motion_releases[version]
            folder = resolve_config(config, example, role, allow_download, ["config.json"])
            source = str(folder)
        else:
            # from_single_file takes a config only as a folder: write the inferred one to a scratch one.
            folder, source = Path(scratch), "read off the weights"
            (folder / "config.json").write_text(json.dumps(infer_motion_config(shapes)), encoding="utf-8")
        adapter = _convert(
            lambda: MotionAdapter.from_single_file(
                state, config=str(folder), torch_dtype=_dtype(dtype), local_files_only=True
            ),
            "motion module",
            file,
            source,
        )
    return SingleFileModel(adapter, family, source, version)


def load_controlnet(
    path: str | Path,
    config: str | Path | None = None,
    *,
    allow_download: bool = False,
    dtype: torch.dtype = torch.float32,
) -> SingleFileModel:
    """A ControlNet file: ControlNet 1.x's layout (SD 1.5), or diffusers' layout in one file (either
    family). Configs from ``config`` or the family's reference ControlNet repo."""
    from diffusers import ControlNetModel

    file = existing_file(path, "ControlNet")
    state = read_state_dict(file, "ControlNet")
    original = has_prefix(state, "control_model.") or has_prefix(state, "input_hint_block.")
    shapes = shapes_of(state)
    if not original and "controlnet_cond_embedding.conv_in.weight" not in state:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{file.name} is not a ControlNet: {detect.seems(shapes)}")
    family = detect.controlnet_family(shapes)
    if family not in families.FAMILIES:
        raise detect.unsupported(file.name, f"a ControlNet for {families.label(family)}")
    if original and families.family(family).size_conditioned:
        # diffusers' converter leaves out the size-conditioning embedding in this layout.
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"{file.name} is an {families.label(family)} ControlNet in the original layout, which diffusers "
            "cannot convert: use its diffusers version (a folder, or its diffusion_pytorch_model.safetensors)",
        )
    role = f"ControlNet {file.name}"
    repo = families.family(family).controlnet_config_repo
    folder = resolve_config(config, repo, role, allow_download, ["config.json"])
    model = _convert(
        lambda: ControlNetModel.from_single_file(
            state, config=str(folder), torch_dtype=_dtype(dtype), local_files_only=True
        ),
        "ControlNet",
        file,
        str(folder),
    )
    return SingleFileModel(model, family, str(folder))


def load_vae(
    path: str | Path,
    family: str,
    config: str | Path | None = None,
    *,
    allow_download: bool = False,
    dtype: torch.dtype = torch.float32,
) -> SingleFileModel:
    """A VAE file (LDM layout, bare or under ``first_stage_model.``, or diffusers'). Both families'
    VAEs have the same shapes, so ``family`` picks the config (its scaling factor): ``config`` (a VAE
    folder or a pipeline folder with ``vae/``) or the family's reference repo."""
    from diffusers import AutoencoderKL

    file = existing_file(path, "VAE")
    state = read_state_dict(file, "VAE")
    if not (has_prefix(state, "encoder.") and has_prefix(state, "decoder.")) and not _vae_part(state):
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{file.name} is not a VAE: {detect.seems(shapes_of(state))}")
    # A VAE folder has its config.json at the top; a pipeline folder (and the reference repo) under vae/.
    own_folder = config is not None and (Path(config).expanduser() / "config.json").is_file()
    required = [] if own_folder else ["vae/config.json"]
    repo = families.family(family).checkpoint_config_repo
    folder = resolve_config(config, repo, f"VAE {file.name}", allow_download, required)
    subfolder = "vae" if (folder / "vae" / "config.json").is_file() else None
    model = _convert(
        lambda: AutoencoderKL.from_single_file(
            _vae_part(state) or state,
            config=str(folder),
            subfolder=subfolder,
            torch_dtype=_dtype(dtype),
            local_files_only=True,
        ),
        "VAE",
        file,
        str(folder),
    )
    return SingleFileModel(model, family, str(folder))


def _checkpoint_configs(family: str) -> list[str]:
    layout = families.family(family)
    encoders, tokenizers = list(layout.text_encoders), layout.tokenizers
    models = ["unet", "vae", *encoders]
    return [*(f"{name}/config.json" for name in models), "scheduler/scheduler_config.json", *tokenizers]


def _part(state: Mapping[str, torch.Tensor], *prefixes: str) -> dict[str, torch.Tensor]:
    """The tensors of one component, names kept: diffusers' converters strip the prefixes themselves.
    Handing each converter only its own part also keeps one encoder's weights out of another's."""
    return {key: value for key, value in state.items() if key.startswith(prefixes)}


def _vae_part(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _part(state, *_VAE)


def _unet(state: Mapping[str, torch.Tensor], folder: Path, file: Path, dtype: torch.dtype) -> Any:
    from diffusers import UNet2DConditionModel

    unet_state = _part(state, detect.UNET_PREFIX)
    return _convert(
        lambda: UNet2DConditionModel.from_single_file(
            unet_state, config=str(folder), subfolder="unet", torch_dtype=_dtype(dtype), local_files_only=True
        ),
        "UNet",
        file,
        str(folder),
    )


def _checkpoint_vae(state: Mapping[str, torch.Tensor], folder: Path, file: Path, dtype: torch.dtype) -> Any | None:
    from diffusers import AutoencoderKL

    vae_state = _vae_part(state)
    if not vae_state:
        log.warning("%s carries no VAE: a separate VAE is needed", file.name)
        return None
    return _convert(
        lambda: AutoencoderKL.from_single_file(
            vae_state, config=str(folder), subfolder="vae", torch_dtype=_dtype(dtype), local_files_only=True
        ),
        "VAE",
        file,
        str(folder),
    )


def _text_encoders(
    state: Mapping[str, torch.Tensor], family: str, folder: Path, file: Path, dtype: torch.dtype
) -> dict[str, Any]:
    from transformers import CLIPTokenizer

    parts = {}
    layout = families.family(family)
    for (name, prefix), kind in zip(layout.text_encoders.items(), layout.text_encoder_classes, strict=True):
        weights = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
        if is_open_clip(weights):
            weights = from_open_clip(weights)
        parts[name] = _convert(
            lambda name=name, kind=kind, weights=weights: clip_model(name, kind, weights, folder, dtype),
            name.replace("_", " "),
            file,
            str(folder),
        )
        tokenizer = name.replace("text_encoder", "tokenizer")
        parts[tokenizer] = _from_folder(
            lambda tokenizer=tokenizer: CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer), tokenizer, folder
        )
    return parts


def _scheduler(folder: Path, v_prediction: bool) -> Any:
    from diffusers import EulerDiscreteScheduler

    scheduler = _from_folder(
        lambda: EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"), "scheduler", folder
    )
    if v_prediction:
        # ComfyUI and the trainers that follow it mark v-prediction checkpoints with an empty "v_pred" tensor.
        log.info("the checkpoint is marked as v-prediction")
        scheduler = EulerDiscreteScheduler.from_config(scheduler.config, prediction_type="v_prediction")
    return scheduler


def _from_folder(load: Callable[[], T], role: str, folder: Path) -> T:
    try:
        return load()
    except (OSError, ValueError) as error:
        raise UnsampleError(
            ErrorCode.MODEL_NOT_FOUND,
            f"the config folder {folder} has no usable {role}: {first_line(error)}",
            str(error),
        ) from error


def _convert(load: Callable[[], T], role: str, file: Path, config: str) -> T:
    """Run one conversion (diffusers' or :func:`clip_model`), turning its failures into errors that name
    the file and config."""
    try:
        model = load()
    except OSError as error:
        raise UnsampleError(
            ErrorCode.MODEL_NOT_FOUND, f"no usable {role} config in {config}: {first_line(error)}", str(error)
        ) from error
    except RuntimeError as error:
        if "meta tensor" not in str(error):
            raise _mismatch(role, file, config, error) from error
        # diffusers fills a model built without weights with what the file has, then moves it to the
        # device: a tensor the file lacks fails there, unnamed.
        raise UnsampleError(
            ErrorCode.MODEL_INVALID, f"{file.name} lacks some of the {role}'s weights (a pruned or partial file?)"
        ) from error
    except MemoryError:
        raise
    except Exception as error:
        # diffusers' converters fail by name lookups (KeyError), shapes (ValueError, IndexError), or
        # with their own error class, which is not public API: all say the weights do not fit the configs.
        raise _mismatch(role, file, config, error) from error
    _check_complete(model, role, file)
    return model


def _mismatch(role: str, file: Path, config: str, error: Exception) -> UnsampleError:
    # diffusers' converters look weights up by name: a KeyError names the one the file lacks. torch's
    # load_state_dict (the text encoders) names the tensors whose shapes differ on the lines after its first.
    sizes = [line.strip() for line in str(error).splitlines() if line.strip().startswith("size mismatch")]
    reason = f"it has no {error.args[0]}" if isinstance(error, KeyError) else (sizes or [_first_sentence(error)])[0]
    return UnsampleError(
        ErrorCode.MODEL_MISMATCH,
        f"the {role} weights in {file.name} do not fit the configs in {config}: {reason}",
        str(error),
    )


def _check_complete(model: Any, role: str, file: Path) -> None:
    # diffusers builds the model on the meta device and fills in what the file has: anything the
    # file lacks stays there, without weights, and would only fail at the first step.
    missing = [name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if tensor.is_meta]
    if missing:
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"{file.name} lacks {len(missing)} of the {role}'s weights (e.g. {', '.join(missing[:3])})",
        )


def _dtype(dtype: torch.dtype) -> torch.dtype | None:
    """diffusers' ``torch_dtype``: float32 is what it builds anyway, and naming it only adds a warning."""
    return None if dtype == torch.float32 else dtype


def _first_sentence(error: Exception) -> str:
    """diffusers follows its shape errors with advice that does not apply here."""
    return first_line(error).split(". ")[0]
