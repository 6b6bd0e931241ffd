"""The two passes of the method: unsample latents to their noise, resample that noise in a new style."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .samplers import REFINED_INVERSES, Denoiser, StepCallback, get_sampler
from .schedules import flip


def unsample(
    model: Denoiser,
    latents: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    *,
    sampler: str = "euler",
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    refine: int = 0,
) -> torch.Tensor:
    """Run a convergent sampler up the flipped schedule: clean latents in, their noise out.

    ``sigmas`` is the ordinary decreasing schedule that :func:`resample` will use; no noise is
    added, so the result is deterministic and still carries the source's motion and layout.
    With ``refine`` > 0 each step of a refinable sampler (Euler: protocol.REFINABLE_SAMPLERS) is
    refined so that resampling with it lands back on the source (see
    :func:`~.samplers.sample_euler_inverse`); DPM++ 2M's multistep update has no such step-local
    inverse, so it ignores ``refine``.
    """
    _check_decreasing(sigmas)
    run = get_sampler(sampler)
    inverse = REFINED_INVERSES.get(run)
    if refine > 0 and inverse is not None:
        return inverse(model, latents, flip(sigmas), extra_args, callback, refine=refine)
    return run(model, latents, flip(sigmas), extra_args, callback)


def resample(
    model: Denoiser,
    noise: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    *,
    sampler: str = "euler",
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Sample down the schedule from unsampled noise as it is: no noise added, no rescaling."""
    _check_decreasing(sigmas)
    return get_sampler(sampler)(model, noise, sigmas, extra_args, callback)


def _check_decreasing(sigmas: Sequence[float] | torch.Tensor) -> None:
    values = torch.as_tensor(sigmas, dtype=torch.float64)
    if len(values) < 2 or not bool((values[1:] < values[:-1]).all()):
        raise ValueError("pass the ordinary decreasing schedule; unsample() flips it itself")
