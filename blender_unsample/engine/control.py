"""ControlNet: hints computed from the frames, and a UNet call that adds ControlNet residuals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Canny thresholds on the Sobel magnitude of [0, 1] intensities: the ControlNet annotator's
# 100 and 200 on a 0-255 scale with the same kernel.
CANNY_LOW, CANNY_HIGH = 0.4, 0.8


def canny_edges(rgb: torch.Tensor, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> torch.Tensor:
    """Canny edge maps, (N, 3, H, W) in {0, 1}, from RGB frames (N, 3, H, W) in [0, 1]."""
    gray = (rgb * torch.tensor([0.299, 0.587, 0.114], device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)).sum(
        1, keepdim=True
    )
    gray = _gaussian_blur(gray, sigma=1.4)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=rgb.device, dtype=rgb.dtype)
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel.t().reshape(1, 1, 3, 3))
    magnitude = torch.hypot(gx, gy)

    # Non-maximum suppression along the gradient, quantised to 0, 45, 90 and 135 degrees.
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180
    sector = (((angle + 22.5) // 45) % 4).long()
    offsets = ((0, 1), (1, 1), (1, 0), (1, -1))  # (row, column) step along the gradient per sector
    padded_magnitude = F.pad(magnitude, (1, 1, 1, 1))
    height, width = magnitude.shape[-2:]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (dy, dx) in enumerate(offsets):
        ahead = padded_magnitude[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        behind = padded_magnitude[..., 1 - dy : 1 - dy + height, 1 - dx : 1 - dx + width]
        keep |= (sector == index) & (magnitude >= ahead) & (magnitude >= behind)
    thin = magnitude * keep

    # Hysteresis: weak edges survive only where connected to a strong one.
    weak = thin >= low
    edges = thin >= high
    for _ in range(max(height, width)):
        grown = weak & (F.max_pool2d(edges.to(rgb.dtype), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.to(rgb.dtype).expand(-1, 3, -1, -1).contiguous()


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, round(2 * sigma))
    x = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    image = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    image = F.conv2d(image, kernel.view(1, 1, 1, -1))
    return F.conv2d(image, kernel.view(1, 1, -1, 1))


def make_hints(kind: str, rgb: np.ndarray) -> np.ndarray:
    """Hint images for a ControlNet, uint8 (N, H, W, 3), from uint8 RGB frames (N, H, W, 3)."""
    if kind == "tile":
        return rgb  # the tile ControlNet is conditioned on the frame itself
    if kind == "canny":
        frames = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
        return (canny_edges(frames) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    raise ValueError(f"unknown control hint {kind!r}")


class ControlledUNet:
    """Calls a diffusers UNet like the UNet itself, adding ControlNet residuals where active.

    ``hints`` holds one uint8 hint per clip frame (F, H, W, 3), for example a memory-mapped
    array, so the clip's hints never need to sit in memory at once. The UNet is called with
    ``frames=`` (the clip indices of the window) to pick the matching hints.
    """

    def __init__(
        self,
        unet: Any,
        controlnet: Any | None = None,
        hints: np.ndarray | None = None,
        strength: float = 1.0,
        start: float = 0.0,
        end: float = 1.0,
        train_timesteps: int = 1000,
    ) -> None:
        self.unet = unet
        self.controlnet = controlnet
        self.hints = hints
        self.strength = strength
        # A schedule fraction p is the training timestep (1 - p) * (T - 1): high t comes first.
        self.t_from = (1 - end) * (train_timesteps - 1)
        self.t_to = (1 - start) * (train_timesteps - 1)
        self.enabled = controlnet is not None
        self._cached: tuple[tuple[int, ...], torch.Tensor] | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
        frames: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor]:
        residuals = {}
        if self.enabled and frames is not None and self.t_from <= float(timestep) <= self.t_to:
            residuals = self._residuals(sample, timestep, encoder_hidden_states, added_cond_kwargs, frames)
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
            **residuals,
        )

    def _residuals(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, frames) -> dict[str, Any]:
        # ControlNet is an image model: video (B, C, F, H, W) goes in as B * F images, batch-major,
        # the order the motion UNet uses inside.
        if sample.ndim == 5:
            b, c, f, h, w = sample.shape
            sample = sample.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        hints = self._hints_on(frames, sample.device, sample.dtype)
        repeats = sample.shape[0] // hints.shape[0]
        down, mid = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=hints.repeat(repeats, 1, 1, 1),
            conditioning_scale=self.strength,
            added_cond_kwargs=_per_image(added_cond_kwargs, sample.shape[0]),
            return_dict=False,
        )
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _hints_on(self, frames: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        # Consecutive calls of one window (both passes of a short clip) reuse the uploaded hints.
        key = tuple(frames)
        if self._cached is None or self._cached[0] != key:
            uint8 = torch.from_numpy(np.ascontiguousarray(self.hints[list(frames)]))
            self._cached = (key, (uint8.to(device).permute(0, 3, 1, 2).to(dtype) / 255))
        return self._cached[1]


def _per_image(added: dict[str, torch.Tensor] | None, images: int) -> dict[str, torch.Tensor] | None:
    """SDXL's pooled/size conditioning, repeated from one row per video to one per image."""
    if not added:
        return added
    return {key: value.repeat_interleave(images // value.shape[0], dim=0) for key, value in added.items()}
