"""A video denoiser with a closed-form answer: clips drawn from a Gaussian correlated across frames.

Clips x0 of shape (C, F, H, W) have independent channels, each with covariance K_t ⊗ K_s:
K_t over frames (a squared-exponential kernel of ``length`` frames plus a small per-frame
``nugget``; on a looping clip the periodic kernel, so the last frame is as close to the first as
to the one before it), K_s over the H×W grid (a separable squared-exponential of ``spatial``
pixels). Every frame has unit variance, so the data's spread is 1.

For x = x0 + sigma * eps the posterior mean is Sigma (Sigma + sigma² I)^-1 x. Called with
``frames=`` (as :class:`ContextWindowDenoiser` calls its inner model) it answers from the marginal
of the same Gaussian over just those frames, in that order: what a video model trained on clips of
the window's length does when it sees one window. Without ``frames`` it sees the whole clip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


class GaussianVideo:
    def __init__(
        self,
        frames: int,
        length: float,
        *,
        looped: bool = False,
        nugget: float = 0.05,
        channels: int = 4,
        size: int = 8,
        spatial: float = 1.0,
    ) -> None:
        self.frames, self.channels, self.size = frames, channels, size
        t = torch.arange(frames, dtype=torch.float64)
        lag = t[:, None] - t[None, :]
        if looped:  # periodic kernel: positive definite on the circle, ~ exp(-d²/2l²) for small lags
            smooth = torch.exp(-2 * torch.sin(math.pi * lag / frames) ** 2 / (2 * math.pi * length / frames) ** 2)
        else:
            smooth = torch.exp(-(lag**2) / (2 * length**2))
        self.temporal = (1 - nugget) * smooth + nugget * torch.eye(frames, dtype=torch.float64)
        p = torch.arange(size, dtype=torch.float64)
        side = torch.exp(-((p[:, None] - p[None, :]) ** 2) / (2 * spatial**2))
        self.spatial = torch.kron(side, side)  # (H*W, H*W), row-major pixels
        self.spatial_values, self.spatial_vectors = torch.linalg.eigh(self.spatial)
        self.spatial_values = self.spatial_values.clamp_min(0)
        self._temporal_eigen: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self.calls = 0

    def covariance(self, frames: Sequence[int] | None = None) -> torch.Tensor:
        """The dense covariance of one channel over ``frames`` (all by default): (f*H*W, f*H*W)."""
        index = list(range(self.frames)) if frames is None else list(frames)
        return torch.kron(self.temporal[index][:, index], self.spatial)

    def sample(self, count: int, seed: int = 0) -> torch.Tensor:
        """``count`` clips, (count, C, F, H, W), float64."""
        generator = torch.Generator().manual_seed(seed)
        values, vectors = self._eigen(tuple(range(self.frames)))
        shape = (count, self.channels, self.frames, self.size * self.size)
        white = torch.randn(shape, generator=generator, dtype=torch.float64)
        scale = (values[:, None] * self.spatial_values[None, :]).sqrt()
        return self._from_eigen(white * scale, vectors).reshape(*shape[:3], self.size, self.size)

    def __call__(self, x: torch.Tensor, sigma: float, frames: Sequence[int] | None = None, **_: Any) -> torch.Tensor:
        """E[x0 | x] for x of shape (B, C, f, H, W) holding ``frames`` of the clip (all by default)."""
        self.calls += 1
        index = tuple(range(self.frames)) if frames is None else tuple(int(i) for i in frames)
        if x.shape[2] != len(index):
            raise ValueError(f"{x.shape[2]} frames given for {len(index)} frame indices")
        values, vectors = self._eigen(index)
        flat = x.reshape(*x.shape[:3], -1).to(torch.float64)
        power = values[:, None] * self.spatial_values[None, :]
        gain = power / (power + sigma**2)
        coefficients = torch.einsum("fi,bcfp,pj->bcij", vectors, flat, self.spatial_vectors)
        return self._from_eigen(coefficients * gain, vectors).reshape(x.shape).to(x.dtype)

    def _from_eigen(self, coefficients: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        return torch.einsum("fi,bcij,pj->bcfp", vectors, coefficients, self.spatial_vectors)

    def _eigen(self, index: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self._temporal_eigen:
            block = self.temporal[list(index)][:, list(index)]
            values, vectors = torch.linalg.eigh(block)
            self._temporal_eigen[index] = (values.clamp_min(0), vectors)
        return self._temporal_eigen[index]
