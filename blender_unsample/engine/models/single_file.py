"""Load single-file models as Civitai and the Hugging Face Hub ship them.

A checkpoint is one ``.safetensors`` (or a ``.ckpt``/``.pt`` pickle, read weights-only) in the layout
of the code that trained it: Stable Diffusion's LDM layout for SD 1.5, SGM's for SDXL, AnimateDiff's
for motion modules, ControlNet 1.x's for ControlNets. diffusers' public ``from_single_file`` converts
the UNet, VAE, ControlNet and motion module; the text encoders only need renaming into transformers'
names, done here (see :func:`_clip_model`). What the file does not hold, the configs (layer sizes,
tokenizer vocabulary, training schedule), comes from a diffusers folder the caller names, else from
the Hugging Face cache of the family's reference repo, downloaded only when allowed. A motion module
needs no config: its shape is read off its weights.

Nothing here runs code from a file: pickles go through torch's weights-only unpickler, and one that
needs more is refused.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import UnsampleError, first_line
from ..protocol import DEFAULT_MODELS, HUB_ID, MODEL_FILE_SUFFIXES, ErrorCode
from . import families

log = logging.getLogger(__name__)

T = TypeVar("T")
Shapes = Mapping[str, tuple[int, ...]]

SINGLE_FILE_SUFFIXES = frozenset(MODEL_FILE_SUFFIXES)
# The repos whose configs fit each family's single files (diffusers' own defaults for them).
CONFIG_REPOS = {family: models.checkpoint for family, models in DEFAULT_MODELS.items()}
# diffusers' versions of AnimateDiff's releases (configs only; a motion module's can be read off its weights).
MOTION_CONFIG_REPOS = {
    "v1": "guoyww/animatediff-motion-adapter-v1-5",
    "v2": "guoyww/animatediff-motion-adapter-v1-5-2",
    "v3": "guoyww/animatediff-motion-adapter-v1-5-3",
    "sdxl": "guoyww/animatediff-motion-adapter-sdxl-beta",
}
# Configs and tokenizer vocabularies only: a few MB, never the weights.
CONFIG_FILES = ["*.json", "**/*.json", "*.txt", "**/*.txt"]
# Every AnimateDiff release (v1, v2, v3, SDXL beta) uses these; the weights do not show them.
MOTION_HEADS = 8
MOTION_GROUPS = 32

_UNET = "model.diffusion_model."
_VAE = ("first_stage_model.", "vae.")
# SDXL's second text encoder is OpenCLIP's: its names, and transformers' for the same tensors.
_OPEN_CLIP_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
_OPEN_CLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_MOTION_KEY = re.compile(
    r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.(\d+)\.(?:temporal_transformer\.)?(.+)$"
)


@dataclass
class SingleFileCheckpoint:
    """The parts of a whole SD 1.5 or SDXL checkpoint, in diffusers' classes."""

    family: str  # "sd15" or "sdxl"
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
    version: str = ""  # motion modules: "v1", "v2", "v3" or "sdxl" (AnimateDiff's releases)


def is_single_file(source: str | Path) -> bool:
    """Whether ``source`` names an existing model file (rather than a diffusers folder or a Hub id)."""
    path = Path(source).expanduser()
    return path.suffix.lower() in SINGLE_FILE_SUFFIXES and path.is_file()


# --- reading a file safely ------------------------------------------------------------------------


def read_state_dict(path: str | Path, role: str = "model") -> dict[str, torch.Tensor]:
    """All tensors in a ``.safetensors`` file, or in a pickle read with torch's weights-only loader.
    ``role`` ("motion module", "VAE", ...) names the file in errors."""
    file = _existing_file(path, role)
    raw = _read_safetensors(file, role) if _is_safetensors(file) else _read_pickle(file, role)
    return _tensors_only(raw, file)


def check_readable(path: str | Path, role: str) -> None:
    """Raise the error a damaged or unreadable weights file deserves; reads only a .safetensors
    header (which also tells a file cut short), and nothing of other formats."""
    file = Path(path)
    if _is_safetensors(file):
        _safetensors_shapes(file, role)


def _existing_file(path: str | Path, role: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UnsampleError(ErrorCode.MODEL_NOT_FOUND, f"the {role} file {file} does not exist")
    return file


def _is_safetensors(file: Path) -> bool:
    return file.suffix.lower() == ".safetensors"


@contextmanager
def _reading_safetensors(file: Path, role: str) -> Iterator[None]:
    """A .safetensors file's read errors in the user's words: damaged or cut short, or not readable."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as error:
        raise _unreadable_safetensors(file, role, error) from error
    except OSError as error:
        raise inaccessible(file, role, error) from error


def _read_safetensors(file: Path, role: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    with _reading_safetensors(file, role):
        return load_file(file)


def _safetensors_shapes(file: Path, role: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes from the header alone: nothing else is read."""
    from safetensors import safe_open

    with _reading_safetensors(file, role), safe_open(file, "pt") as handle:
        names = handle.keys()  # a safetensors handle is not iterable itself
        return {key: tuple(handle.get_slice(key).get_shape()) for key in names}


def _unreadable_safetensors(file: Path, role: str, error: Exception) -> UnsampleError:
    return UnsampleError(
        ErrorCode.MODEL_INVALID,
        f"the {role} file {file} is not a readable .safetensors file: it is cut short (an interrupted "
        f"download?), damaged, or not a model at all ({first_line(error)})",
        str(error),
    )


def inaccessible(file: Path, role: str, error: OSError) -> UnsampleError:
    # The file is there (checked before) but the system refuses to hand it over: its permissions,
    # a disk or network share that fails. Nothing is wrong with the model itself, so not MODEL_INVALID.
    return UnsampleError(
        ErrorCode.MODEL_NOT_FOUND,
        f"the {role} file {file} exists but cannot be read ({error.strerror or first_line(error)}): "
        "check that your user may read it and that its disk is reachable",
        str(error),
    )


def _read_pickle(file: Path, role: str) -> Any:
    # weights_only: the unpickler builds tensors and plain containers and refuses everything else,
    # so no code in the file can run. There is deliberately no fallback to a full unpickle.
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise _unreadable_pickle(file, role, error) from error
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"{file.name} holds Python objects besides weights, and loading it would run code from the "
            "file: it was refused and nothing in it was run. Use the .safetensors version of this model.",
            str(error),
        ) from error
    except OSError as error:
        raise inaccessible(file, role, error) from error
    except Exception as error:  # torch raises many kinds for a damaged archive; all mean the same here
        raise _unreadable_pickle(file, role, error) from error


def _unreadable_pickle(file: Path, role: str, error: Exception) -> UnsampleError:
    return UnsampleError(
        ErrorCode.MODEL_INVALID,
        f"the {role} file {file} cannot be read as a weights-only PyTorch checkpoint: it is cut short, damaged "
        f"or not a model ({first_line(error)}). Use the .safetensors version of this model.",
        str(error),
    )


def _tensors_only(raw: Any, file: Path) -> dict[str, torch.Tensor]:
    # Lightning and the original training scripts nest the weights under "state_dict".
    while isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    tensors = (
        {key: value for key, value in raw.items() if isinstance(value, torch.Tensor)} if isinstance(raw, dict) else {}
    )
    if not tensors:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{file.name} holds no model weights")
    return tensors


def _shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def _file_shapes(file: Path, role: str) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.Tensor] | None]:
    """Names and shapes, reading only the header of a .safetensors; a pickle must be read whole
    (the tensors are returned too, so that it is read once)."""
    if _is_safetensors(file):
        return _safetensors_shapes(file, role), None
    state = read_state_dict(file, role)
    return _shapes_of(state), state


# --- what a file is -------------------------------------------------------------------------------


def checkpoint_family(path: str | Path) -> str:
    """``"sd15"`` or ``"sdxl"`` for a whole checkpoint file; reads only the header of a .safetensors."""
    file = _existing_file(path, "checkpoint")
    return detect_checkpoint_family(_file_shapes(file, "checkpoint")[0], file.name)


def detect_checkpoint_family(shapes: Shapes, name: str = "the file") -> str:
    """The family of a whole checkpoint from its tensor names (and one shape); anything else is refused."""
    if not _has(shapes, _UNET):
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{name} is not a Stable Diffusion checkpoint: {_guess(shapes)}")
    in_channels = shapes.get(_UNET + "input_blocks.0.0.weight", (0, 4))[1]
    if in_channels != 4:
        raise _unsupported(
            name, f"an inpainting or instruct-pix2pix checkpoint (its UNet takes {in_channels} channels)"
        )
    if _has(shapes, "conditioner.embedders.1.model."):
        return "sdxl"
    if _has(shapes, "conditioner.embedders.0.model."):
        raise _unsupported(name, "the SDXL refiner")
    if _has(shapes, "cond_stage_model.model."):
        raise _unsupported(name, "a Stable Diffusion 2.x checkpoint")
    if _has(shapes, "cond_stage_model.transformer."):
        return "sd15"
    raise UnsampleError(
        ErrorCode.MODEL_INVALID, f"{name} has a UNet but no text encoder: give a whole SD 1.5 or SDXL checkpoint"
    )


def detect_motion_module(shapes: Shapes, name: str = "the file") -> tuple[str, str]:
    """(family, version) of an AnimateDiff motion module, in AnimateDiff's layout or diffusers'."""
    if any("lora" in key.lower() for key in shapes):
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{name} is a LoRA, not an AnimateDiff motion module")
    if _has(shapes, "controlnet_cond_embedding"):
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{name} is a SparseCtrl ControlNet, not a motion module")
    down = _motion_modules(shapes, "down_blocks")
    if not down:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{name} is not an AnimateDiff motion module: {_guess(shapes)}")
    # AnimateDiff's SDXL module follows SDXL's three UNet levels; SD 1.5 has four (the tiny test model two).
    if len(down) == 3:
        return "sdxl", "sdxl"
    if _motion_modules(shapes, "mid_block"):
        return "sd15", "v2"
    return "sd15", "v1" if _motion_table_length(shapes) == 24 else "v3"


def _has(shapes: Iterable[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


def _unsupported(name: str, what: str) -> UnsampleError:
    return UnsampleError(
        ErrorCode.MODEL_INVALID, f"{name} is {what}, which Unsample does not support: use SD 1.5 or SDXL"
    )


def _guess(shapes: Shapes) -> str:
    """What a file that is not what we wanted seems to be, for the message."""
    keys = list(shapes)
    if _has(keys, _UNET):
        return "it looks like a whole Stable Diffusion checkpoint"
    if any("lora" in key.lower() for key in keys):
        return "it looks like a LoRA"
    if any(".motion_modules." in key for key in keys):
        return "it looks like an AnimateDiff motion module"
    if any(".temporal_attentions." in key for key in keys):
        return "it looks like Hotshot-XL's temporal layers"
    if _has(keys, "control_model.") or _has(keys, "input_hint_block.") or _has(keys, "controlnet_"):
        return "it looks like a ControlNet"
    if _has(keys, "encoder.") and _has(keys, "decoder."):
        return "it looks like a VAE"
    if _has(keys, "down_blocks.") and _has(keys, "conv_in."):
        return "it looks like a UNet alone in diffusers' layout"
    return f"none of its {len(keys)} tensors belongs to one (the first is {keys[0]!r})" if keys else "it is empty"


# --- configs --------------------------------------------------------------------------------------


def resolve_config(
    config: str | Path | None,
    default_repo: str,
    role: str,
    allow_download: bool = False,
    required: Iterable[str] = (),
) -> Path:
    """The local folder with the diffusers configs for a single file.

    ``config`` may name a folder (used as it is) or a Hub repo id; without it, ``default_repo``. A repo
    comes from the Hugging Face cache, or is fetched (configs and tokenizer files only) when
    ``allow_download``; otherwise MODEL_NOT_FOUND says which repo is missing and how to get it.
    ``required`` lists paths the folder must have (``unet/config.json``, ...): a cached copy without
    them counts as missing, a named folder without them is refused.
    """
    required = list(required)
    if config:
        folder = Path(config).expanduser()
        if folder.is_dir():
            if missing := _missing(folder, required):
                raise UnsampleError(
                    ErrorCode.MODEL_NOT_FOUND,
                    f"the config folder {folder} for the {role} has no {', '.join(missing)}: name a diffusers "
                    f"folder of the matching kind (such as a local copy of {default_repo})",
                )
            return folder
        if not HUB_ID.match(str(config)):
            raise UnsampleError(ErrorCode.MODEL_NOT_FOUND, f"the config folder {config} for the {role} does not exist")
    repo = str(config) if config else default_repo
    cached = _cached_configs(repo, required)
    if cached is not None:
        return cached
    if not allow_download:
        raise UnsampleError(
            ErrorCode.MODEL_NOT_FOUND,
            f"the {role} needs the configs of {repo} (a few MB of settings and tokenizer files, no weights), "
            f"which are not in the Hugging Face cache and downloads are off: allow downloads once (command "
            f"line: --allow-download) to fetch them, or name a config folder: a local diffusers copy of {repo}",
        )
    return _download_configs(repo, required, role)


def _missing(folder: Path, required: Iterable[str]) -> list[str]:
    return [name for name in required if not (folder / name).exists()]


def _cached_configs(repo: str, required: list[str]) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, allow_patterns=CONFIG_FILES, local_files_only=True))
    except (OSError, ValueError):  # not cached (or not a valid repo id, which cannot be cached either)
        return None
    return None if _missing(folder, required) else folder


def _download_configs(repo: str, required: list[str], role: str) -> Path:
    from huggingface_hub import snapshot_download

    log.info("downloading the configs of %s from the Hugging Face Hub", repo)
    try:
        folder = Path(snapshot_download(repo, allow_patterns=CONFIG_FILES))
    except (OSError, ValueError) as error:
        raise UnsampleError(
            ErrorCode.MODEL_NOT_FOUND,
            f"cannot download the configs of {repo} for the {role}: {first_line(error)}",
            str(error),
        ) from error
    if missing := _missing(folder, required):
        raise UnsampleError(ErrorCode.MODEL_NOT_FOUND, f"{repo} has no {', '.join(missing)} for the {role}")
    return folder


def infer_motion_config(shapes: Shapes) -> dict[str, Any]:
    """A MotionAdapter config read off a motion module's weights, with AnimateDiff's head count and
    norm groups, which the weights do not show."""
    down = _motion_modules(shapes, "down_blocks")
    levels = sorted(down)
    widths = [shapes[_motion_key(shapes, f"{block}.motion_modules.0.", "proj_in.weight")][0] for block in levels]
    mid = _motion_modules(shapes, "mid_block").get("mid_block", set())
    config: dict[str, Any] = {
        "_class_name": "MotionAdapter",
        "block_out_channels": widths,
        "motion_layers_per_block": len(down[levels[0]]),
        "motion_transformer_layers_per_block": _transformer_layers(shapes, f"{levels[0]}.motion_modules.0."),
        "motion_mid_block_layers_per_block": max(len(mid), 1),
        "motion_num_attention_heads": MOTION_HEADS,
        "motion_norm_num_groups": MOTION_GROUPS,
        "motion_max_seq_length": _motion_table_length(shapes) or 32,
        "use_motion_mid_block": bool(mid),
        "conv_in_channels": shapes["conv_in.weight"][1] if "conv_in.weight" in shapes else None,
    }
    if mid:
        config["motion_transformer_layers_per_mid_block"] = _transformer_layers(shapes, "mid_block.motion_modules.0.")
    return config


def _motion_modules(shapes: Iterable[str], kind: str) -> dict[str, set[int]]:
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


def _motion_table_length(shapes: Shapes) -> int:
    """Frames the sinusoidal position table covers (24 in AnimateDiff v1, 32 later); 0 if absent."""
    for key, shape in shapes.items():
        if key.endswith(("pos_encoder.pe", "pos_embed.pe")):
            return shape[1]
    return 0


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
    file = _existing_file(path, "checkpoint")
    shapes, state = _file_shapes(file, "checkpoint")
    family = detect_checkpoint_family(shapes, file.name)
    required = _checkpoint_configs(family)
    folder = resolve_config(config, CONFIG_REPOS[family], f"checkpoint {file.name}", allow_download, required)
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

    file = _existing_file(path, "motion module")
    state = read_state_dict(file, "motion module")
    shapes = _shapes_of(state)
    family, version = detect_motion_module(shapes, file.name)
    with tempfile.TemporaryDirectory(prefix="unsample-motion-") as scratch:
        if config:
            role, example = f"motion module {file.name}", MOTION_CONFIG_REPOS[version]
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

    file = _existing_file(path, "ControlNet")
    state = read_state_dict(file, "ControlNet")
    original = _has(state, "control_model.") or _has(state, "input_hint_block.")
    if not original and "controlnet_cond_embedding.conv_in.weight" not in state:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{file.name} is not a ControlNet: {_guess(_shapes_of(state))}")
    sdxl = any(key.endswith(("label_emb.0.0.weight", "add_embedding.linear_1.weight")) for key in state)
    if original and sdxl:
        # diffusers' converter leaves out SDXL's extra embedding in this layout.
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"{file.name} is an SDXL ControlNet in the original layout, which diffusers cannot convert: "
            "use its diffusers version (a folder, or its diffusion_pytorch_model.safetensors)",
        )
    family = "sdxl" if sdxl else "sd15"
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

    file = _existing_file(path, "VAE")
    state = read_state_dict(file, "VAE")
    if not (_has(state, "encoder.") and _has(state, "decoder.")) and not _vae_part(state):
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{file.name} is not a VAE: {_guess(_shapes_of(state))}")
    # A VAE folder has its config.json at the top; a pipeline folder (and the reference repo) under vae/.
    own_folder = config is not None and (Path(config).expanduser() / "config.json").is_file()
    required = [] if own_folder else ["vae/config.json"]
    folder = resolve_config(config, CONFIG_REPOS[family], f"VAE {file.name}", allow_download, required)
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

    unet_state = _part(state, _UNET)
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
    for name, prefix in families.family(family).text_encoders.items():
        weights = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
        if name == "text_encoder_2":
            weights = _from_open_clip(weights)
        parts[name] = _convert(
            lambda name=name, weights=weights: _clip_model(name, weights, folder, dtype),
            name.replace("_", " "),
            file,
            str(folder),
        )
        tokenizer = name.replace("text_encoder", "tokenizer")
        parts[tokenizer] = _from_folder(
            lambda tokenizer=tokenizer: CLIPTokenizer.from_pretrained(folder, subfolder=tokenizer), tokenizer, folder
        )
    return parts


def _clip_model(name: str, weights: Mapping[str, torch.Tensor], folder: Path, dtype: torch.dtype) -> Any:
    """One CLIP text encoder in transformers' names, built from its config and filled with ``weights``.

    diffusers' only public loader for these is the pipeline's ``from_single_file``: it takes a path
    (so it would read the whole file a second time), cannot read SD 1.x files whose CLIP lacks
    ``text_model.``, and gives SDXL's second encoder the first one's weights when both are equally
    wide. The weights need only renaming (:func:`_from_open_clip`); transformers does the rest."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
    config = CLIPTextConfig.from_pretrained(folder, subfolder=name, local_files_only=True)
    with init_empty_weights():  # parameters take no memory until the file's are put in; buffers are real
        model = cls(config)
    # Files carry transformers 4's names, everything under text_model. (older SD 1.x ones without it);
    # transformers 5 keeps that level only in the model with a projection. Match the names without it.
    own = {key.removeprefix("text_model."): key for key in model.state_dict()}
    plain = {key.removeprefix("text_model."): value for key, value in weights.items()}
    named = {own[key]: value for key, value in plain.items() if key in own}
    model.load_state_dict(named, strict=False, assign=True)  # what the file lacks stays on meta: see _convert
    return model.to(dtype).eval()


def _from_open_clip(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder from OpenCLIP's names to transformers' (without ``text_model.``);
    what has no counterpart (``logit_scale``, ``attn_mask``) is left out."""
    converted = {}
    for key, value in weights.items():
        if key in _OPEN_CLIP_TOP:
            converted[_OPEN_CLIP_TOP[key]] = value
        elif key == "text_projection":  # OpenCLIP multiplies by it from the right; a Linear from the left
            converted["text_projection.weight"] = value.T.contiguous()
        elif match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key):
            layer, module, kind = f"encoder.layers.{match[1]}.", match[2], match[3]
            if module in _OPEN_CLIP_LAYER:
                converted[f"{layer}{_OPEN_CLIP_LAYER[module]}.{kind}"] = value
        elif match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key):
            # Query, key and value projections stacked in one tensor, in that order.
            for part, chunk in zip("qkv", value.chunk(3), strict=True):
                converted[f"encoder.layers.{match[1]}.self_attn.{part}_proj.{match[2]}"] = chunk
    return converted


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
    """Run one conversion (diffusers' or :func:`_clip_model`), turning its failures into errors that name
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
