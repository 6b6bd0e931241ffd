"""Convergent ODE samplers over a denoiser, for both directions of a schedule.

The model contract follows k-diffusion: ``denoised = model(x, sigma, **extra_args)`` where ``x``
lives on the variance-exploding scale ``x = x0 + sigma * eps`` and ``sigma`` is a Python float.
A decreasing schedule samples (noise to image); an increasing one, from :func:`schedules.flip`,
unsamples (image to the noise that would have produced it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

import torch


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: float, **extra: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class Step:
    """What a sampler reports after each model call."""

    index: int
    total: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor


StepCallback = Callable[[Step], None]


def sample_euler(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """First-order Euler steps along the probability-flow ODE dx/dsigma = (x - denoised) / sigma."""
    extra_args = extra_args or {}
    schedule = _as_floats(sigmas)
    for i, (sigma, sigma_next) in enumerate(pairwise(schedule)):
        denoised = model(x, sigma, **extra_args)
        if callback is not None:
            callback(Step(i, len(schedule) - 1, sigma, sigma_next, x, denoised))
        x = torch.lerp(denoised, x, sigma_next / sigma)
    return x


def sample_dpmpp_2m(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al., 2022): a multistep exponential integrator in lambda = -log sigma.

    Each step is exact for a denoised estimate that is linear in lambda, which it extrapolates
    from the current and previous model outputs; the first and any step to 0 are first order.
    """
    extra_args = extra_args or {}
    schedule = _as_floats(sigmas)
    previous: torch.Tensor | None = None
    for i, (sigma, sigma_next) in enumerate(pairwise(schedule)):
        denoised = model(x, sigma, **extra_args)
        if callback is not None:
            callback(Step(i, len(schedule) - 1, sigma, sigma_next, x, denoised))
        target = denoised
        if previous is not None and sigma_next > 0:
            h = math.log(sigma / sigma_next)
            h_last = math.log(schedule[i - 1] / sigma)
            r = h_last / h
            target = torch.lerp(denoised, previous, -1 / (2 * r))
        # Exact solution of the ODE for a constant denoised estimate over the step.
        x = torch.lerp(target, x, sigma_next / sigma)
        previous = denoised
    return x


def sample_euler_inverse(
    model: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float] | torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    refine: int = 0,
) -> torch.Tensor:
    """Euler up an increasing schedule, each step refined to invert a forward Euler step exactly.

    A plain Euler step up uses the slope at its start; the forward step back down uses the slope
    at its end, so the round trip drifts. ``refine`` fixed-point iterations solve for the point
    whose forward Euler step lands on where this step began (one model call each).
    """
    extra_args = extra_args or {}
    schedule = _as_floats(sigmas)
    for i, (sigma, sigma_next) in enumerate(pairwise(schedule)):
        denoised = model(x, sigma, **extra_args)
        guess = torch.lerp(denoised, x, sigma_next / sigma)
        for _ in range(refine):
            slope = (guess - model(guess, sigma_next, **extra_args)) / sigma_next
            guess = x + slope * (sigma_next - sigma)
        if callback is not None:  # once the step, refinements included, is done
            callback(Step(i, len(schedule) - 1, sigma, sigma_next, x, denoised))
        x = guess
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "dpmpp_2m": sample_dpmpp_2m,
}
# The refined inverse of each sampler protocol.REFINABLE_SAMPLERS names, by its step function.
REFINED_INVERSES: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {
    sample_euler: sample_euler_inverse,
}

# Samplers other tools offer that add fresh noise on every step: their path cannot be run
# backwards, so unsampling with them cannot return to the source.
NOISE_INJECTING = (
    "euler_ancestral",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddpm",
    "lcm",
)


class UnsupportedSamplerError(ValueError):
    """A sampler name that unsampling cannot use."""


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function for ``name``; noise-injecting samplers are refused with the reason."""
    key = name.strip().lower()
    if key in SAMPLERS:
        return SAMPLERS[key]
    if key in NOISE_INJECTING or key.endswith(("_ancestral", "_sde")):
        raise UnsupportedSamplerError(
            f"sampler {name!r} adds fresh random noise at every step, so unsampling with it cannot "
            f"converge back to the source video; use one of: {', '.join(SAMPLERS)}"
        )
    raise UnsupportedSamplerError(f"unknown sampler {name!r}; use one of: {', '.join(SAMPLERS)}")


def _as_floats(sigmas: Sequence[float] | torch.Tensor) -> list[float]:
    values = sigmas.tolist() if isinstance(sigmas, torch.Tensor) else [float(s) for s in sigmas]
    if len(values) < 2:
        raise ValueError("a schedule needs at least two sigmas")
    if any(s <= 0 for s in values[:-1]):
        raise ValueError("only the last sigma of a schedule may be 0; flip() starts unsampling above 0")
    return values
