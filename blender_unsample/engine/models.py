"""Load the pipeline's components from diffusers folders or Hugging Face Hub ids."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import families
from .errors import UnsampleError
from .lora import apply_loras
from .protocol import ErrorCode, JobSpec

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_components(
    spec: JobSpec, dtype: torch.dtype, vae_dtype: torch.dtype, warn: Callable[[str], None] = log.warning
) -> Components:
    """Everything a restyle job needs, on the CPU, in the given dtypes.

    The configs come first: a family mismatch between any two files is reported before weights load.
    """
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        MotionAdapter,
        UNet2DConditionModel,
        UNetMotionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    def load(cls: Any, source: str, subfolder: str | None, role: str, **kwargs: Any) -> Any:
        return load_pretrained(cls, source, subfolder, role, spec.allow_download, **kwargs)

    def config(cls: Any, source: str, subfolder: str | None, role: str) -> dict[str, Any]:
        return load_pretrained(cls, source, subfolder, role, spec.allow_download, method="load_config")

    # 1. Configs, and whether the files fit together.
    unet_config = config(UNet2DConditionModel, spec.model, "unet", "checkpoint")
    families.check_family_setting(spec.family, spec.model, unet_config)
    vae_source, vae_subfolder = (spec.vae, None) if spec.vae else (spec.model, "vae")
    vae_config = config(AutoencoderKL, vae_source, vae_subfolder, "VAE")
    families.check_vae(spec.vae or spec.model, vae_config, spec.model, unet_config)
    if spec.uses_motion_module:
        adapter_config = config(MotionAdapter, spec.motion_adapter, None, "motion module")
        families.check_motion_adapter(spec.motion_adapter, adapter_config, spec.model, unet_config)
    if spec.control != "none":
        controlnet_config = config(ControlNetModel, spec.controlnet, None, "ControlNet")
        families.check_controlnet(spec.controlnet, controlnet_config, spec.model, unet_config)

    # 2. Weights.
    tokenizers = [load(CLIPTokenizer, spec.model, "tokenizer", "checkpoint")]
    text_encoders = [load(CLIPTextModel, spec.model, "text_encoder", "checkpoint", torch_dtype=dtype)]
    if spec.family == "sdxl":
        tokenizers.append(load(CLIPTokenizer, spec.model, "tokenizer_2", "checkpoint"))
        encoder = load(CLIPTextModelWithProjection, spec.model, "text_encoder_2", "checkpoint", torch_dtype=dtype)
        text_encoders.append(encoder)
    unet = load(UNet2DConditionModel, spec.model, "unet", "checkpoint", torch_dtype=dtype)
    if spec.loras:
        # Merged into the image UNet's weights, so the motion UNet built from it carries them too.
        report = apply_loras(spec.lora_weights, unet, *text_encoders)
        for message in report.warnings:
            warn(message)
    scheduler = load(EulerDiscreteScheduler, spec.model, "scheduler", "checkpoint")
    # SDXL's own VAE overflows in half precision; a fixed one (force_upcast off) may use it.
    if spec.family == "sdxl" and vae_config.get("force_upcast", True):
        vae_dtype = torch.float32
    vae = load(AutoencoderKL, vae_source, vae_subfolder, "VAE", torch_dtype=vae_dtype)
    controlnet = None
    if spec.control != "none":
        controlnet = load(ControlNetModel, spec.controlnet, None, "ControlNet", torch_dtype=dtype)
    if spec.uses_motion_module:
        adapter = load(MotionAdapter, spec.motion_adapter, None, "motion module", torch_dtype=dtype)
        unet = UNetMotionModel.from_unet2d(unet, adapter)
        del adapter
        if unet.dtype != dtype:
            unet = unet.to(dtype)
    for model in (*text_encoders, unet, vae, controlnet):
        if model is not None:
            model.eval().requires_grad_(False)
    return Components(spec.family, tokenizers, text_encoders, unet, vae, scheduler, controlnet, spec.uses_motion_module)


def load_pretrained(
    cls: Any,
    source: str,
    subfolder: str | None,
    role: str,
    allow_download: bool,
    method: str = "from_pretrained",
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained`` (or ``load_config``) from a local folder, the Hugging Face cache, or
    (if allowed) the Hub."""
    local = Path(source).expanduser()
    if local.exists():
        return _from_pretrained(cls, method, str(local), subfolder, role, ErrorCode.MODEL_INVALID, **kwargs)
    if not _HUB_ID.match(source):
        raise UnsampleError(ErrorCode.MODEL_NOT_FOUND, f"the {role} {source} does not exist")
    try:
        return getattr(cls, method)(source, subfolder=subfolder, local_files_only=True, **kwargs)
    except OSError as cached_error:
        if not allow_download:
            raise UnsampleError(
                ErrorCode.MODEL_NOT_FOUND,
                f"the {role} {source} is not in the Hugging Face cache and downloads are off: allow "
                f"downloads (command line: --allow-download) or give a local diffusers folder",
                str(cached_error),
            ) from cached_error
    log.info("downloading %s (%s) from the Hugging Face Hub", source, subfolder or "all")
    return _from_pretrained(cls, method, source, subfolder, role, ErrorCode.MODEL_NOT_FOUND, **kwargs)


def _from_pretrained(
    cls: Any, method: str, source: str, subfolder: str | None, role: str, code: ErrorCode, **kwargs: Any
) -> Any:
    try:
        return getattr(cls, method)(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        where = f"{source}/{subfolder}" if subfolder else source
        raise UnsampleError(code, f"cannot load the {role} from {where}: {_first_line(error)}", str(error)) from error


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
