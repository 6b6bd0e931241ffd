"""Noise schedules: decreasing sigmas (variance-exploding scale) that end in 0.

Every function returns a 1-D float64 CPU tensor of ``steps + 1`` sigmas. Samplers read them as
Python floats, so a schedule never causes a host/device sync.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from ..protocol import SCHEDULERS

# The first sigma of a flipped schedule: unsampling cannot start at exactly 0, where the
# denoiser's "noise" direction (x - denoised) / sigma is undefined.
FLIP_START_SIGMA = 1e-4


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps!r}")


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def ays(steps: int, published: Sequence[float]) -> torch.Tensor:
    """Align Your Steps (Sabour et al., 2024): a family's published 10-step list (its module's
    ``ays_sigmas``), log-linearly resampled to any step count."""
    _check_steps(steps)
    if len(published) < 2 or any(later >= earlier for earlier, later in itertools.pairwise(published)):
        raise ValueError(f"an Align Your Steps list must fall from one sigma to another, got {published!r}")
    # At 10 steps the interpolation lands on the published values themselves.
    sigmas = _loglinear_resample(torch.tensor(published, dtype=torch.float64), steps + 1)
    sigmas[-1] = 0.0
    return sigmas


def flow(steps: int, shift: float = 1.0) -> torch.Tensor:
    """A flow-matching model's schedule (sigma in [0, 1], 1 is pure noise): evenly spaced from 1 to
    0, then moved toward the noise end by ``shift * sigma / (1 + (shift - 1) * sigma)``, as Wan and
    SD 3 are sampled (Wan 2.1: shift 3 at 480p, 5 at 720p). Starts at 1, ends at 0."""
    _check_steps(steps)
    if not (isinstance(shift, int | float) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"the flow shift must be a positive number, got {shift!r}")
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _loglinear_resample(sigmas: torch.Tensor, count: int) -> torch.Tensor:
    """Interpolate log(sigma) linearly over [0, 1] at ``count`` evenly spaced points."""
    known_at = np.linspace(0.0, 1.0, len(sigmas))
    wanted_at = np.linspace(0.0, 1.0, count)
    return torch.from_numpy(np.exp(np.interp(wanted_at, known_at, np.log(sigmas.numpy()))))


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: evenly spaced in sigma ** (1 / rho), then a final 0."""
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log(sigma) from sigma_max to sigma_min, then a final 0."""
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp())


def normal(steps: int, training_sigmas: torch.Tensor) -> torch.Tensor:
    """Evenly spaced training timesteps from the last to the first, their sigmas, then a final 0."""
    _check_steps(steps)
    training = training_sigmas.detach().to(torch.float64).cpu()
    timesteps = torch.linspace(len(training) - 1, 0, steps, dtype=torch.float64)
    return _append_zero(sigma_at_timestep(training, timesteps))


def sigma_at_timestep(training_sigmas: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Sigma at fractional training timesteps, interpolating log(sigma) between neighbours."""
    log_sigmas = np.log(training_sigmas.to(torch.float64).numpy())
    return torch.from_numpy(np.exp(np.interp(timesteps.numpy(), np.arange(len(log_sigmas)), log_sigmas)))


def get_sigmas(
    scheduler: str,
    steps: int,
    *,
    training_sigmas: torch.Tensor,
    ays_sigmas: Sequence[float] = (),
) -> torch.Tensor:
    """The named schedule for a model whose training sigmas are given; "ays" needs the family's
    published list."""
    sigma_min, sigma_max = float(training_sigmas.min()), float(training_sigmas.max())
    if scheduler == "ays":
        return ays(steps, ays_sigmas)
    if scheduler == "karras":
        return karras(steps, sigma_min, sigma_max)
    if scheduler == "exponential":
        return exponential(steps, sigma_min, sigma_max)
    if scheduler == "normal":
        return normal(steps, training_sigmas)
    raise ValueError(f"unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)}")


def flip(sigmas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Reverse a schedule so that sampling over it walks from clean latents up to noise."""
    flipped = torch.as_tensor(sigmas, dtype=torch.float64).flip(0).clone()
    if flipped[0] == 0:
        flipped[0] = FLIP_START_SIGMA
    return flipped


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
