"""ControlNet: hints computed from the frames, and a UNet call that adds ControlNet residuals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The canny ControlNets (lllyasviel's control_v11p_sd15_canny, diffusers' SDXL canny) were trained on
# edge maps from OpenCV's cv2.Canny(rgb_uint8, 100, 200): thresholds on the L1 Sobel magnitude of 8-bit
# levels. canny_edges reproduces that algorithm step for step, so that the hints look like the ones
# the models saw.
CANNY_LOW, CANNY_HIGH = 100, 200

# The thinning step sorts gradient directions with integer tangents, as OpenCV does: tan(22.5 deg) in
# 15-bit fixed point. The same rounding decides the same pixels on the boundaries between sectors.
_SHIFT = 15
_TAN_22 = round(0.41421356237309503 * (1 << _SHIFT))


def canny_edges(rgb: torch.Tensor, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> torch.Tensor:
    """Canny edge maps, (N, 3, H, W) in {0, 1}, from RGB frames (N, 3, H, W) in [0, 1].

    The frames are taken as 8-bit levels, as the annotator reads them; ``low`` and ``high`` are on
    that 0-255 scale. Each step is OpenCV's: 3x3 Sobel with replicated borders, per pixel the channel
    with the largest L1 magnitude |gx| + |gy| (OpenCV's rule for colour input), non-maximum
    suppression along four directions, hysteresis over 8-connected pixels.
    """
    levels = (rgb.detach().float().clamp(0, 1) * 255).round().to(torch.int32)
    gx, gy = _sobel(levels)
    magnitude = gx.abs() + gy.abs()
    # Per pixel, the channel of largest magnitude, the first one on ties (argmax returns the first).
    channel = magnitude.argmax(dim=1, keepdim=True)
    magnitude, gx, gy = (t.gather(1, channel) for t in (magnitude, gx, gy))

    # OpenCV swaps thresholds given the wrong way round and floors them; magnitudes must exceed them.
    low, high = sorted((math.floor(low), math.floor(high)))
    candidate = (magnitude > low) & _is_local_maximum(magnitude, gx, gy)
    strong = candidate & (magnitude > high)
    edges = _hysteresis(candidate, strong)
    return edges.to(rgb.dtype if rgb.is_floating_point() else torch.float32).expand(-1, 3, -1, -1).contiguous()


def _sobel(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 Sobel derivatives along x and y, exact in integers, borders replicated."""
    p = F.pad(levels.float(), (1, 1, 1, 1), mode="replicate").to(torch.int32)
    # Smoothing [1, 2, 1] across the derivative's direction, central difference along it.
    rows = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]
    columns = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]
    return rows[..., 2:] - rows[..., :-2], columns[..., 2:, :] - columns[..., :-2, :]


def _is_local_maximum(magnitude: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Non-maximum suppression as OpenCV does it: outside the image the magnitude is 0; a pixel must
    beat its neighbour before it (left, above) and at least equal the one after it, and on diagonals
    beat both, so that a plateau two pixels wide keeps one of them."""
    height, width = magnitude.shape[-2:]
    padded = F.pad(magnitude, (1, 1, 1, 1))

    def neighbour(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    ax, ay = gx.abs().long(), gy.abs().long() << _SHIFT
    tan22 = ax * _TAN_22
    tan67 = tan22 + (ax << (_SHIFT + 1))
    horizontal = ay < tan22
    vertical = ~horizontal & (ay > tan67)
    diagonal = ~horizontal & ~vertical
    # Gradient components of the same sign point down-right (y grows downwards): compare along the
    # main diagonal; of opposite signs, along the other one.
    same_sign = (gx < 0) == (gy < 0)
    along_x = (magnitude > neighbour(0, -1)) & (magnitude >= neighbour(0, 1))
    along_y = (magnitude > neighbour(-1, 0)) & (magnitude >= neighbour(1, 0))
    main_diagonal = (magnitude > neighbour(-1, -1)) & (magnitude > neighbour(1, 1))
    anti_diagonal = (magnitude > neighbour(-1, 1)) & (magnitude > neighbour(1, -1))
    return (
        (horizontal & along_x)
        | (vertical & along_y)
        | (diagonal & torch.where(same_sign, main_diagonal, anti_diagonal))
    )


def _hysteresis(candidate: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """The candidates 8-connected (through candidates) to a strong pixel.

    Works on the candidates alone (a small share of the pixels) and finds their connected components
    as parallel union-find does: each candidate points to a smaller one of its component; every round,
    the least pointer around a candidate is also handed to the candidate it points to (so whole trees
    merge at once), then pointers are followed to their ends. A long edge chain takes about
    log(length) rounds, not one per pixel as growing the edges from the strong pixels would.
    """
    n, _, height, width = candidate.shape
    where = candidate[:, 0].nonzero()  # (K, 3): image, row, column
    count = where.shape[0]
    # Each candidate's number at its place, -1 elsewhere and on a border that keeps neighbours in the image.
    number = torch.full((n, height + 2, width + 2), -1, dtype=torch.long, device=candidate.device)
    image, row, column = where.unbind(1)
    number[image, row + 1, column + 1] = torch.arange(count, device=candidate.device)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    neighbours = torch.stack([number[image, row + 1 + dy, column + 1 + dx] for dy, dx in offsets], dim=1)
    neighbours = torch.where(neighbours >= 0, neighbours, torch.arange(count, device=candidate.device)[:, None])

    parent = torch.arange(count, device=candidate.device)
    while True:
        least = parent[neighbours].amin(dim=1)
        updated = parent.scatter_reduce(0, parent, least, reduce="amin")  # hook the tree onto the neighbour's
        updated = torch.minimum(updated, least)
        while True:  # follow the pointers to the roots
            jumped = updated[updated]
            if torch.equal(jumped, updated):
                break
            updated = jumped
        if torch.equal(updated, parent):
            break
        parent = updated
    has_strong = torch.zeros(count, dtype=torch.bool, device=candidate.device)
    has_strong[parent[strong[image, 0, row, column]]] = True
    edges = torch.zeros_like(candidate)
    edges[image, 0, row, column] = has_strong[parent]
    return edges


def make_hints(kind: str, rgb: np.ndarray) -> np.ndarray:
    """Hint images for a ControlNet, uint8 (N, H, W, 3), from uint8 RGB frames (N, H, W, 3)."""
    if kind == "tile":
        # The frame itself, at the processing size: the tile ControlNets learned to rebuild detail from
        # a degraded (blurred or down- and up-scaled) copy of the picture, and their reference
        # pipelines feed the image resized to the output size, nothing more.
        return rgb
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
