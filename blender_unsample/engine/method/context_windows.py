"""Context windows: run a motion model over a long clip a few frames at a time.

Each model evaluation is split into overlapping windows of frames; the per-window outputs are
blended by a weighted average, so memory is bounded by the window length, not the clip length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .samplers import Denoiser


def context_windows(frames: int, length: int, overlap: int, looped: bool = False) -> list[list[int]]:
    """Frame indices of each window. A clip no longer than the window is one window.

    Windows start every ``length - overlap`` frames. Without looping the last window is pulled
    back to end on the last frame; with looping, windows wrap past the end to the first frames,
    so the seam between the last and first frame gets context from both sides.
    """
    if frames < 1 or length < 1 or not 0 <= overlap < length:
        raise ValueError(f"bad context: {frames} frames, length {length}, overlap {overlap}")
    if frames <= length:
        return [list(range(frames))]
    stride = length - overlap
    if looped:
        return [[(start + i) % frames for i in range(length)] for start in range(0, frames, stride)]
    starts = list(range(0, frames - length + 1, stride))
    if starts[-1] + length < frames:
        starts.append(frames - length)
    return [list(range(start, start + length)) for start in starts]


def fusion_weights(length: int, kind: str) -> torch.Tensor:
    """Per-position weights inside a window: ``flat`` (all 1) or ``pyramid`` (peaked in the middle)."""
    if kind == "flat":
        return torch.ones(length)
    if kind == "pyramid":
        position = torch.arange(length, dtype=torch.float32)
        return torch.minimum(position + 1, length - position)
    raise ValueError(f"unknown fusion {kind!r}; use flat or pyramid")


# Evaluates the inner denoiser on each window of ``x`` at ``sigma``; yields the outputs in window
# order. One process loops over them; a cluster spreads them over its workers (engine/cluster).
WindowEvaluator = Callable[[torch.Tensor, float, list[list[int]], dict[str, Any]], Iterable[torch.Tensor]]


class ContextWindowDenoiser:
    """A denoiser over a whole clip (B, C, F, H, W) built from one that sees a window at a time.

    The inner denoiser is called as ``inner(x_window, sigma, frames=indices, **extra)`` so it can
    pick matching per-frame inputs (ControlNet hints). ``on_window(i, n)`` runs after each window
    and may raise to stop the job between windows. ``evaluate`` replaces the loop that calls the
    inner denoiser window by window; the fusion stays here, so the result does not depend on who
    evaluated the windows.
    """

    def __init__(
        self,
        inner: Denoiser | None,
        windows: list[list[int]],
        fusion: str = "pyramid",
        on_window: Callable[[int, int], None] | None = None,
        evaluate: WindowEvaluator | None = None,
    ) -> None:
        if inner is None and evaluate is None:
            raise ValueError("give the inner denoiser or a window evaluator")
        self.inner = inner
        self.windows = windows
        self.on_window = on_window
        self.evaluate = evaluate or self._evaluate_here
        self._weights = fusion_weights(len(windows[0]), fusion)

    def __call__(self, x: torch.Tensor, sigma: float, **extra: Any) -> torch.Tensor:
        frames = x.shape[2]
        outputs = iter(self.evaluate(x, sigma, self.windows, extra))
        if len(self.windows) == 1 and self.windows[0] == list(range(frames)):
            denoised = next(outputs)
            self._report(0)
            return denoised

        total = torch.zeros_like(x)
        weight_sum = torch.zeros(frames, dtype=x.dtype, device=x.device)
        weights = self._weights.to(x.device, x.dtype)
        for i, (window, denoised) in enumerate(zip(self.windows, outputs, strict=True)):
            index = torch.tensor(window, device=x.device)
            total.index_add_(2, index, denoised.to(x.device) * weights.view(1, 1, -1, 1, 1))
            weight_sum.index_add_(0, index, weights)
            self._report(i)
        return total / weight_sum.view(1, 1, -1, 1, 1)

    def _evaluate_here(
        self, x: torch.Tensor, sigma: float, windows: list[list[int]], extra: dict[str, Any]
    ) -> Iterable[torch.Tensor]:
        # A generator: each window runs only when the fusion asks for it, after the previous
        # window's on_window had its chance to stop the job.
        for window in windows:
            whole = window == list(range(x.shape[2]))
            part = x if whole else x.index_select(2, torch.tensor(window, device=x.device))
            yield self.inner(part, sigma, frames=window, **extra)

    def _report(self, index: int) -> None:
        if self.on_window is not None:
            self.on_window(index, len(self.windows))
