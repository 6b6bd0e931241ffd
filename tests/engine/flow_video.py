"""An exact flow-matching video model, from the exact variance-exploding one (gaussian_video.py).

A flow model's sample x = (1 - s) * x0 + s * eps is the variance-exploding sample x / (1 - s) at
sigma s / (1 - s), and the rescaling is one to one: the posterior mean of x0 is the same. So the
flow model's denoised output is the Gaussian's closed form, and at s = 1 (pure noise) it is the
data's mean, 0.
"""

from __future__ import annotations

from typing import Any

import torch
from gaussian_video import GaussianVideo


class FlowVideo:
    def __init__(self, video: GaussianVideo) -> None:
        self.video = video
        self.calls = 0

    def sample(self, count: int, seed: int = 0) -> torch.Tensor:
        return self.video.sample(count, seed)

    def __call__(self, x: torch.Tensor, sigma: float, **extra: Any) -> torch.Tensor:
        self.calls += 1
        if sigma >= 1.0:
            return torch.zeros_like(x)
        return self.video(x / (1 - sigma), sigma / (1 - sigma), **extra)


def diffusers_flow_scheduler(steps: int, shift: float) -> Any:
    """diffusers' FlowMatchEulerDiscreteScheduler set to schedules.flow(steps, shift)'s sigmas whenever a
    pipeline sets its timesteps: evenly spaced sigmas, shifted by the scheduler itself."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    set_timesteps = scheduler.set_timesteps
    evenly = torch.linspace(1.0, 0.0, steps + 1)[:-1].tolist()
    scheduler.set_timesteps = lambda *_, device=None, **__: set_timesteps(device=device, sigmas=evenly)
    return scheduler
