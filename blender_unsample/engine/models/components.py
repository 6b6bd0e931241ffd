"""Load the pipeline's components from diffusers folders or Hugging Face Hub ids."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import UnsampleError, first_line
from ..protocol import HUB_ID, ErrorCode, JobSpec
from . import families, hotshot, single_file, weights_file
from .add_embedding import copy_add_embedding
from .families import detect
from .lora import apply_loras

log = logging.getLogger(__name__)

# What diffusers and transformers raise for a model they cannot load (a damaged safetensors file
# comes through as its own error class in transformers).
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError)


@dataclass
class Components:
    family: str
    tokenizers: list[Any]  # one per text encoder: SD 1.5 has one, SDXL two
    text_encoders: list[Any]
    unet: Any  # UNetMotionModel with a motion adapter, else UNet2DConditionModel
    vae: Any
    scheduler: Any  # only its training schedule and prediction type are used
    controlnet: Any | None
    motion: bool
    context_limit: int | None = None  # Hotshot-XL's motion layers saw 8 frames at once
    # SDXL: the pipeline config's force_zeros_for_empty_prompt (an absent negative prompt is zeros).
    zero_empty_negative: bool = False

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_components(
    spec: JobSpec,
    dtype: torch.dtype,
    vae_dtype: torch.dtype,
    warn: Callable[[str], None] = log.warning,
    on_download: DownloadReport | None = None,
) -> Components:
    """Everything a restyle job needs, on the CPU, in the given dtypes.

    Each model may be a diffusers folder, a Hub id or a single file (.safetensors, or a .ckpt read
    weights-only). Whether the files fit together is checked on configs and file headers, before
    the weights they describe are loaded and always before anything is sampled.
    """
    loader = _Loader(spec, dtype, on_download)
    # 1. The checkpoint: its UNet decides what every other file must fit.
    tokenizers, text_encoders, unet, scheduler, embedded_vae = loader.checkpoint()
    # 2. The others, each checked against it; LoRAs merged into the image UNet, so that the
    # motion UNet built from it carries them too.
    vae = loader.vae(unet.config, embedded_vae, vae_dtype)
    controlnet = loader.controlnet(unet.config) if spec.control != "none" else None
    motion = loader.motion_module(unet.config) if spec.uses_motion_module else None
    if spec.loras:
        for message in apply_loras(spec.lora_weights, unet, *text_encoders, checkpoint=spec.model).warnings:
            warn(message)
    context_limit = None
    if motion is not None:
        unet, context_limit = _motion_unet(unet, motion, spec)
        if unet.dtype != dtype:
            unet = unet.to(dtype)
    for model in (*text_encoders, unet, vae, controlnet):
        if model is not None:
            model.eval().requires_grad_(False)
    return Components(
        spec.family, tokenizers, text_encoders, unet, vae, scheduler, controlnet, motion is not None, context_limit,
        zero_empty_negative=families.family(spec.family).empty_negative_may_be_zeros
        and forces_zeros_for_empty_prompt(loader.pipeline_config),
    )  # fmt: skip


def vae_dtype(requested: torch.dtype, family: str, vae_config: Mapping[str, Any]) -> torch.dtype:
    """The VAE's precision: the device's (``requested``), except SDXL's original VAE, which
    overflows in fp16 and says so with ``force_upcast`` (diffusers' default too). A fixed one,
    such as madebyollin/sdxl-vae-fp16-fix, turns it off and keeps the device's precision."""
    if families.family(family).vae_upcast and vae_config.get("force_upcast", True):
        return torch.float32
    return requested


def _motion_unet(unet: Any, motion: Any, spec: JobSpec) -> tuple[Any, int | None]:
    """The motion UNet, and the most frames its motion module was trained to see at once."""
    from diffusers import MotionAdapter, UNetMotionModel

    if not isinstance(motion, MotionAdapter):  # Hotshot-XL's temporal layers, as a state dict
        return hotshot.hotshot_motion_unet(unet, motion, spec.motion_adapter, spec.model), hotshot.HOTSHOT_CONTEXT
    motion_unet = UNetMotionModel.from_unet2d(unet, motion)
    copy_add_embedding(unet, motion_unet)  # from_unet2d leaves SDXL's at random init
    return motion_unet, None


class _Loader:
    """Loads each role from a folder, a Hub id or a single file."""

    def __init__(self, spec: JobSpec, dtype: torch.dtype, on_download: DownloadReport | None) -> None:
        self.spec = spec
        self.dtype = dtype
        self.on_download = on_download
        self.pipeline_config = spec.model  # the folder or repo whose model_index.json goes with the checkpoint

    def _load(self, cls: Any, source: str, subfolder: str | None, role: str, **kwargs: Any) -> Any:
        allowed = self.spec.allow_download
        return load_pretrained(cls, source, subfolder, role, allowed, on_download=self.on_download, **kwargs)

    def _config(self, cls: Any, source: str, subfolder: str | None, role: str) -> dict[str, Any]:
        allowed = self.spec.allow_download
        return load_pretrained(cls, source, subfolder, role, allowed, "load_config", self.on_download)

    def checkpoint(self) -> tuple[list[Any], list[Any], Any, Any, Any | None]:
        """(tokenizers, text encoders, UNet2DConditionModel, scheduler, the file's own VAE or None)."""
        spec = self.spec
        if single_file.is_single_file(spec.model):
            families.check_family(spec.family, spec.model, detect.checkpoint_file_family(spec.model))
            loaded = single_file.load_checkpoint(
                spec.model, spec.config or None, allow_download=spec.allow_download, dtype=self.dtype,
                vae_dtype=torch.float32,  # its precision is decided in vae(), from its config
            )  # fmt: skip
            self.pipeline_config = str(loaded.config)
            layout = families.family(spec.family)
            tokenizers = [getattr(loaded, name) for name in layout.tokenizers]
            encoders = [getattr(loaded, name) for name in layout.text_encoders]
            return tokenizers, encoders, loaded.unet, loaded.scheduler, loaded.vae
        import transformers
        from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTokenizer

        unet_config = self._config(UNet2DConditionModel, spec.model, "unet", "checkpoint")
        families.check_family(spec.family, spec.model, detect.unet_family(unet_config))
        layout = families.family(spec.family)
        tokenizers = [self._load(CLIPTokenizer, spec.model, name, "checkpoint") for name in layout.tokenizers]
        encoders = [
            self._load(getattr(transformers, kind), spec.model, name, "checkpoint", torch_dtype=self.dtype)
            for name, kind in zip(layout.text_encoders, layout.text_encoder_classes, strict=True)
        ]
        unet = self._load(UNet2DConditionModel, spec.model, "unet", "checkpoint", torch_dtype=self.dtype)
        scheduler = self._load(EulerDiscreteScheduler, spec.model, "scheduler", "checkpoint")
        return tokenizers, encoders, unet, scheduler, None

    def vae(self, unet_config: Any, embedded: Any | None, dtype: torch.dtype) -> Any:
        """The separate VAE if one is named, else the checkpoint's own, in the precision its config
        allows (see :func:`vae_dtype`)."""
        from diffusers import AutoencoderKL

        spec = self.spec
        if not spec.vae and embedded is not None:
            families.check_vae(spec.model, embedded.config, spec.model, unet_config)
            return embedded.to(vae_dtype(dtype, spec.family, embedded.config))
        if spec.vae and single_file.is_single_file(spec.vae):
            # Loaded in fp32, then lowered if its config (beside the file, or --config) allows.
            folder = _config_beside(spec.vae) or spec.config or None
            vae = single_file.load_vae(spec.vae, spec.family, folder, allow_download=spec.allow_download).model
            families.check_vae(spec.vae, vae.config, spec.model, unet_config)
            return vae.to(vae_dtype(dtype, spec.family, vae.config))
        if not spec.vae and single_file.is_single_file(spec.model):
            raise UnsampleError(
                ErrorCode.MODEL_INVALID, f"the checkpoint {spec.model} carries no VAE: name one (command line: --vae)"
            )
        source, subfolder = (spec.vae, None) if spec.vae else (spec.model, "vae")
        config = self._config(AutoencoderKL, source, subfolder, "VAE")
        families.check_vae(spec.vae or spec.model, config, spec.model, unet_config)
        precision = vae_dtype(dtype, spec.family, config)
        return self._load(AutoencoderKL, source, subfolder, "VAE", torch_dtype=precision)

    def controlnet(self, unet_config: Any) -> Any:
        from diffusers import ControlNetModel

        spec = self.spec
        if single_file.is_single_file(spec.controlnet):
            model = single_file.load_controlnet(
                spec.controlnet, _config_beside(spec.controlnet), allow_download=spec.allow_download, dtype=self.dtype
            ).model
            families.check_controlnet(spec.controlnet, model.config, spec.model, unet_config)
            return model
        config = self._config(ControlNetModel, spec.controlnet, None, "ControlNet")
        families.check_controlnet(spec.controlnet, config, spec.model, unet_config)
        return self._load(ControlNetModel, spec.controlnet, None, "ControlNet", torch_dtype=self.dtype)

    def motion_module(self, unet_config: Any) -> Any:
        """A MotionAdapter, or Hotshot-XL's temporal layers as a state dict (checked when attached)."""
        from diffusers import MotionAdapter

        spec = self.spec
        if single_file.is_single_file(spec.motion_adapter):
            state = weights_file.read_state_dict(spec.motion_adapter, "motion module")
            if hotshot.is_hotshot_state_dict(state):
                return {key: value.to(self.dtype) for key, value in state.items()}
            del state
            adapter = single_file.load_motion_module(
                spec.motion_adapter, _config_beside(spec.motion_adapter), allow_download=spec.allow_download,
                dtype=self.dtype,
            ).model  # fmt: skip
            families.check_motion_adapter(spec.motion_adapter, adapter.config, spec.model, unet_config)
            return adapter
        config = self._config(MotionAdapter, spec.motion_adapter, None, "motion module")
        families.check_motion_adapter(spec.motion_adapter, config, spec.model, unet_config)
        return self._load(MotionAdapter, spec.motion_adapter, None, "motion module", torch_dtype=self.dtype)


def forces_zeros_for_empty_prompt(source: str) -> bool:
    """An SDXL pipeline's ``force_zeros_for_empty_prompt``, from the model_index.json of a diffusers
    folder or a cached Hub repo; where there is none, or it does not say, diffusers' default for the
    SDXL and AnimateDiff-SDXL pipelines: True."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(str(Path(source).expanduser()), local_files_only=True)
    except (OSError, ValueError):  # no model_index.json, or not a readable one
        return True
    return bool(config.get("force_zeros_for_empty_prompt", True))


def _config_beside(path: str) -> str | None:
    """A single model file's config.json sitting next to it (a diffusers model folder's layout)."""
    folder = Path(path).expanduser().parent
    return str(folder) if (folder / "config.json").is_file() else None


DownloadReport = Callable[[str, int, int], None]  # (repo, files done, files in all); may raise to stop


def load_pretrained(
    cls: Any,
    source: str,
    subfolder: str | None,
    role: str,
    allow_download: bool,
    method: str = "from_pretrained",
    on_download: DownloadReport | None = None,
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained`` (or ``load_config``) from a local folder, the Hugging Face cache, or
    (if allowed) the Hub, reporting a download's progress file by file to ``on_download``."""
    local = Path(source).expanduser()
    if local.exists():
        return _from_pretrained(cls, method, str(local), subfolder, role, ErrorCode.MODEL_INVALID, **kwargs)
    if not HUB_ID.match(source):
        raise UnsampleError(ErrorCode.MODEL_NOT_FOUND, f"the {role} {source} does not exist")
    try:
        return getattr(cls, method)(source, subfolder=subfolder, local_files_only=True, **kwargs)
    except _LOAD_ERRORS as cached_error:
        # Not cached (an OSError), or cached but damaged: then a download would not help.
        _check_weights(_cached_folder(source), subfolder, role)
        if not isinstance(cached_error, OSError):
            raise _cannot_load(role, source, subfolder, ErrorCode.MODEL_INVALID, cached_error) from cached_error
        if not allow_download:
            raise UnsampleError(
                ErrorCode.MODEL_NOT_FOUND,
                f"the {role} {source} is not in the Hugging Face cache and downloads are off: allow "
                f"downloads (command line: --allow-download) or give a local diffusers folder",
                str(cached_error),
            ) from cached_error
    log.info("downloading %s (%s) from the Hugging Face Hub", source, subfolder or "all")
    if on_download is not None:
        download(source, subfolder, on_download)
    return _from_pretrained(cls, method, source, subfolder, role, ErrorCode.MODEL_NOT_FOUND, **kwargs)


def download(repo: str, subfolder: str | None, report: DownloadReport) -> None:
    """Fetch what loading ``repo`` (``subfolder``) needs into the Hugging Face cache, file by file,
    calling ``report`` after each; weights in one format only (safetensors where the repo has them),
    no half-precision or EMA duplicates."""
    from huggingface_hub import HfApi, snapshot_download
    from tqdm.auto import tqdm

    try:
        files = HfApi().list_repo_files(repo)
    except Exception as error:  # the Hub's own errors (no network, no such repo) are many classes
        raise UnsampleError(
            ErrorCode.MODEL_NOT_FOUND, f"cannot reach {repo} on the Hugging Face Hub: {error}"
        ) from error
    wanted = [f for f in files if "/" not in f or (subfolder and f.startswith(subfolder + "/"))]
    safetensors = any(f.endswith(".safetensors") for f in wanted)
    wanted = [
        f for f in wanted
        if not (safetensors and f.endswith((".bin", ".ckpt", ".pt", ".pth")))
        and not f.endswith((".onnx", ".msgpack", ".h5", ".pb")) and ".fp16." not in f and "non_ema" not in f
    ]  # fmt: skip

    class Reporting(tqdm):
        # Counts for itself: a disabled bar (progress bars off) skips its own count.
        done = 0

        def update(self, n: int = 1) -> bool | None:
            shown = super().update(n)
            self.done += n
            report(repo, self.done, len(wanted))
            return shown

    report(repo, 0, len(wanted))
    snapshot_download(repo, allow_patterns=wanted, tqdm_class=Reporting)


def _from_pretrained(
    cls: Any, method: str, source: str, subfolder: str | None, role: str, code: ErrorCode, **kwargs: Any
) -> Any:
    try:
        return getattr(cls, method)(source, subfolder=subfolder, **kwargs)
    except _LOAD_ERRORS as error:
        # diffusers and transformers report a damaged weights file in many ways, some not naming it.
        local = Path(source)
        _check_weights(local if local.is_dir() else _cached_folder(source), subfolder, role)
        raise _cannot_load(role, source, subfolder, code, error) from error


def _cannot_load(role: str, source: str, subfolder: str | None, code: ErrorCode, error: Exception) -> UnsampleError:
    where = f"{source}/{subfolder}" if subfolder else source
    return UnsampleError(code, f"cannot load the {role} from {where}: {first_line(error)}", str(error))


def _check_weights(folder: Path | None, subfolder: str | None, role: str) -> None:
    """Raise the error of the first damaged or unreadable weights file in a model folder, naming it."""
    if folder is None:
        return
    where = folder / subfolder if subfolder else folder
    safetensors = sorted(where.glob("*.safetensors"))
    for file in safetensors:
        weights_file.check_readable(file, f"{role} weights")
    if not safetensors:  # an older folder, in PyTorch's format: read now only because loading failed
        for file in sorted(where.glob("*pytorch_model*.bin")):  # the names diffusers/transformers load
            weights_file.read_state_dict(file, f"{role} weights")


def _cached_folder(repo: str) -> Path | None:
    """The Hugging Face cache's copy of ``repo``, if it has one."""
    from huggingface_hub import snapshot_download

    if not HUB_ID.match(repo):
        return None
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not cached, in any of the ways huggingface_hub reports it
        return None
