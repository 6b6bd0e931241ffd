"""A denoiser with a closed-form answer: data drawn from an isotropic Gaussian mixture.

For data x0 ~ sum_k w_k N(mu_k, tau_k^2 I) and x = x0 + sigma * eps, the posterior mean
E[x0 | x] is a responsibility-weighted sum of per-component Wiener estimates. Samplers driven by
it can be checked against the exact probability-flow ODE without any trained network.
"""

from __future__ import annotations

import torch


class GaussianMixture:
    def __init__(self, means: torch.Tensor, stds: torch.Tensor, weights: torch.Tensor) -> None:
        self.means = means.to(torch.float64)  # (K, D)
        self.stds = stds.to(torch.float64)  # (K,)
        self.weights = weights.to(torch.float64) / weights.sum()  # (K,)
        self.calls = 0

    @classmethod
    def standard(cls, dims: int = 4) -> GaussianMixture:
        """Three well separated, unequal components: far from a single Gaussian."""
        means = torch.zeros(3, dims, dtype=torch.float64)
        means[0, 0], means[1, 0], means[2, 1] = 1.5, -1.5, 1.5
        return cls(means, torch.tensor([0.3, 0.5, 0.2]), torch.tensor([0.5, 0.3, 0.2]))

    @property
    def variance(self) -> torch.Tensor:
        """Per-coordinate variance of the data, averaged over coordinates."""
        mean = (self.weights[:, None] * self.means).sum(0)
        second = (self.weights[:, None] * (self.means**2 + self.stds[:, None] ** 2)).sum(0)
        return (second - mean**2).mean()

    def sample(self, count: int, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        component = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        noise = torch.randn(count, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[component] + self.stds[component, None] * noise

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        variance = self.stds**2 + sigma**2  # (K,)
        offset = x[:, None, :] - self.means[None]  # (N, K, D)
        dims = x.shape[1]
        log_resp = self.weights.log() - 0.5 * dims * variance.log() - (offset**2).sum(-1) / (2 * variance)
        resp = log_resp.softmax(dim=1)  # (N, K)
        shrink = (self.stds**2 / variance)[None, :, None]
        per_component = self.means[None] + shrink * offset
        return (resp[:, :, None] * per_component).sum(1)
