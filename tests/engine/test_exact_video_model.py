"""The exact video model behind benchmark figure 8: its posterior mean is the true one."""

import pytest
import torch
from gaussian_video import GaussianVideo

from blender_unsample.engine.method.context_windows import ContextWindowDenoiser, context_windows


def dense_posterior_mean(model: GaussianVideo, x: torch.Tensor, sigma: float, frames=None) -> torch.Tensor:
    """Sigma (Sigma + sigma² I)^-1 x by a plain linear solve, channel by channel."""
    cov = model.covariance(frames)
    flat = x.reshape(x.shape[0] * x.shape[1], -1).T.to(torch.float64)  # (f*H*W, B*C)
    eye = torch.eye(cov.shape[0], dtype=torch.float64)
    return (cov @ torch.linalg.solve(cov + sigma**2 * eye, flat)).T.reshape(x.shape)


@pytest.mark.parametrize("looped", [False, True])
@pytest.mark.parametrize("sigma", [0.05, 1.0, 14.6])
def test_the_posterior_mean_is_the_linear_solve(looped, sigma):
    model = GaussianVideo(10, 3.0, looped=looped, channels=2, size=4)
    x = model.sample(3, seed=1) + sigma * torch.randn(3, 2, 10, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(model(x, sigma), dense_posterior_mean(model, x, sigma), atol=1e-9, rtol=1e-9)
    window = [7, 8, 9, 0, 1]  # a window wrapping past the end: the marginal over those frames, in that order
    part = x[:, :, window]
    torch.testing.assert_close(
        model(part, sigma, frames=window), dense_posterior_mean(model, part, sigma, window), atol=1e-9, rtol=1e-9
    )


def test_one_window_over_the_whole_looped_clip_is_the_exact_answer():
    model = GaussianVideo(12, 2.0, looped=True, channels=2, size=4)
    x = model.sample(2, seed=2) + 0.7 * torch.randn(2, 2, 12, 4, 4, dtype=torch.float64)
    whole = [(5 + i) % 12 for i in range(12)]  # every frame, starting mid-clip: goes through the fusion path
    windowed = ContextWindowDenoiser(model, [whole], "pyramid")
    torch.testing.assert_close(windowed(x, 0.7), model(x, 0.7), atol=1e-6, rtol=0)


def test_short_windows_lose_what_the_whole_clip_knows():
    model = GaussianVideo(24, 4.0, channels=1, size=4)
    x = model.sample(4, seed=3) + 2.0 * torch.randn(4, 1, 24, 4, 4, dtype=torch.float64)
    exact = model(x, 2.0)
    windowed = ContextWindowDenoiser(model, context_windows(24, 6, 2), "flat")(x, 2.0)
    assert float((windowed - exact).pow(2).mean().sqrt()) > 1e-3


def test_samples_have_the_model_s_spread_and_frame_correlation():
    model = GaussianVideo(16, 4.0, channels=4, size=8)
    clips = model.sample(64, seed=4)
    assert float(clips.var()) == pytest.approx(1.0, abs=0.05)
    lag1 = float((clips[:, :, 1:] * clips[:, :, :-1]).mean())
    assert lag1 == pytest.approx(float(model.temporal[0, 1]), abs=0.05)
