"""The model the samplers call, built in one place for a job in this process and for a cluster
worker: the UNet (with its motion module) and the ControlNet behind one call, turned into a
denoiser by the scheduler's prediction type."""

from __future__ import annotations

from typing import Any

from ..method.denoisers import UNetDenoiser
from ..models.components import Components
from ..protocol import JobSpec
from .controlnet import ControlledUNet


def build_denoiser(components: Components, spec: JobSpec, hints: Any) -> tuple[ControlledUNet, UNetDenoiser]:
    """The ControlNet-wrapped UNet (its ``enabled`` and ``hints`` are set per pass) and the denoiser
    over it. ``hints``: the clip's ControlNet hints, or None where they arrive later (a cluster
    worker gets them with each pass)."""
    unet = ControlledUNet(
        components.unet,
        components.controlnet,
        hints,
        spec.controlnet_strength,
        spec.control_start,
        spec.control_end,
        components.scheduler.config.num_train_timesteps,
    )
    # Without a motion module the frames are a batch of images; with one, a clip.
    return unet, UNetDenoiser.from_scheduler(unet, components.scheduler, frames_in_batch=not components.motion)
