"""Warp error: how much a clip changes from frame to frame beyond what its motion explains.

For each pair of neighbouring frames, frame t is moved along the motion onto frame t+1 and the two are
compared: the mean squared difference over the pixels that are visible in both frames (occluded and
disoccluded pixels, and those whose source lies outside the frame, are left out). This is the "warp
error" (E_warp) that Rerender-A-Video and FRESCO report for video restyling, there with a flow
estimator's flow and occlusion mask; here the flow can also be known exactly.

Conventions (numpy only, no torch):

- ``frames``: (F, H, W, C) floats, values in [0, 1] (uint8 frames are divided by 255).
- ``flow``: (F-1, H, W, 2), the backward flow from frame t+1 to frame t in pixels, (dx, dy): the scene
  point at pixel (x, y) of frame t+1 was at (x + dx, y + dy) in frame t. Frame t is sampled there
  bilinearly.
- ``valid``: (F-1, H, W) booleans, True where pixel (x, y) of frame t+1 is visible in frame t too.

``demo_like_clip`` draws a small version of the demo clip (tests/demo/demo_in_blender.py: a camera pan
over hills, a bouncing ball, a spinning square) with its exact flow and validity mask.

A run with real weights reports it the same way: read the source and styled frames as arrays, then
``warp_error(styled, clip.flow, clip.valid) / warp_error(source, clip.flow, clip.valid)``, with the
flow and mask of a clip drawn here (``save_clip_frames`` writes its frames for a job), or of a flow
estimator for footage of unknown motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["KnownMotionClip", "demo_like_clip", "load_frames", "save_clip_frames", "warp", "warp_error", "warp_errors"]


def _as_float(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames.astype(np.float64) / 255.0
    return frames.astype(np.float64)


def warp(frame: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``frame`` (H, W, C) at (x + dx, y + dy) for every pixel, bilinearly.

    Returns the warped frame and a mask of the pixels whose four bilinear neighbours all lie inside
    the frame (elsewhere the warped value is meaningless and is set to 0).
    """
    frame = _as_float(frame)
    height, width = frame.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    # A neighbour with zero weight (integer positions) need not exist.
    x1 = np.where(fx[..., 0] > 0, x0 + 1, x0)
    y1 = np.where(fy[..., 0] > 0, y0 + 1, y0)
    inside = (x0 >= 0) & (y0 >= 0) & (x1 < width) & (y1 < height)
    cx0, cx1 = np.clip(x0, 0, width - 1), np.clip(x1, 0, width - 1)
    cy0, cy1 = np.clip(y0, 0, height - 1), np.clip(y1, 0, height - 1)
    top = frame[cy0, cx0] * (1 - fx) + frame[cy0, cx1] * fx
    bottom = frame[cy1, cx0] * (1 - fx) + frame[cy1, cx1] * fx
    warped = top * (1 - fy) + bottom * fy
    return np.where(inside[..., None], warped, 0.0), inside


def warp_errors(frames: np.ndarray, flow: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per frame pair t -> t+1: the mean squared difference between frame t+1 and frame t moved along
    the motion, over valid pixels (and channels). NaN for a pair with no valid pixel."""
    frames = _as_float(frames)
    count = frames.shape[0] - 1
    if frames.ndim != 4 or flow.shape != (count, *frames.shape[1:3], 2) or valid.shape != (count, *frames.shape[1:3]):
        raise ValueError(
            f"want frames (F, H, W, C), flow (F-1, H, W, 2), valid (F-1, H, W); "
            f"got {frames.shape}, {flow.shape}, {valid.shape}"
        )
    errors = np.full(count, np.nan)
    for t in range(count):
        warped, inside = warp(frames[t], flow[t])
        mask = valid[t].astype(bool) & inside
        if mask.any():
            errors[t] = float(((frames[t + 1] - warped) ** 2)[mask].mean())
    return errors


def warp_error(frames: np.ndarray, flow: np.ndarray, valid: np.ndarray) -> float:
    """The clip's warp error: the per-pair errors of :func:`warp_errors`, averaged over frame pairs."""
    return float(np.nanmean(warp_errors(frames, flow, valid)))


# --- a clip of known motion -------------------------------------------------------------------------------------


@dataclass
class KnownMotionClip:
    frames: np.ndarray  # (F, H, W, 3) float in [0, 1]
    flow: np.ndarray  # (F-1, H, W, 2) backward flow, frame t+1 -> frame t
    valid: np.ndarray  # (F-1, H, W) bool: visible in both frames
    layers: np.ndarray  # (F, H, W) int: 0 background, 1 square, 2 ball (the topmost at each pixel)


BACKGROUND, SQUARE, BALL = 0, 1, 2


def demo_like_clip(frames: int = 16, size: int = 64, pan: float = 1.25, quantise: bool = True) -> KnownMotionClip:
    """The demo's scene, small and exact: hills panning left by ``pan`` px a frame (the camera pans right),
    a shaded ball moving right and bouncing in front of a textured square spinning about its centre.

    Every pixel's colour is a function of where its scene point sits on its layer, so the backward flow
    of each layer is exact; the edges are hard (no anti-aliasing), so a pixel belongs to one layer.
    With ``quantise`` the colours are rounded to 8 bits, as written to PNG.
    """
    s = size / 64.0  # the motion is given at 64 px and scales with the frame
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    square_centre = np.array([0.32 * size, 0.45 * size])
    half, radius = 9.0 * s, 7.0 * s

    def ball_centre(t: float) -> np.ndarray:
        return np.array([6.0 * s + 2.5 * s * t, size * (0.72 - 0.30 * abs(math.sin(t / 4.0)))])

    def angle(t: float) -> float:
        return t / 6.0

    def background(u: np.ndarray, y: np.ndarray) -> np.ndarray:
        rows = (y / size)[..., None]
        sky = (1 - rows) * np.array([0.16, 0.27, 0.55]) + rows * np.array([0.98, 0.67, 0.43])
        ridge = size * (0.62 + 0.08 * np.sin(u / (14.0 * s)) + 0.03 * np.sin(u / (4.0 * s)))
        grass = np.array([0.24, 0.51, 0.24]) * (1 + 0.15 * np.sin(u / (3.0 * s)) * np.cos(y / (2.5 * s)))[..., None]
        return np.where((y > ridge)[..., None], grass, sky)

    def square_local(t: float, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, si = math.cos(angle(t)), math.sin(angle(t))
        dx, dy = x - square_centre[0], y - square_centre[1]
        return c * dx + si * dy, -si * dx + c * dy

    pictures, layer_maps = [], []
    for t in range(frames):
        picture = background(xs + pan * t, ys)
        layer = np.zeros((size, size), dtype=np.int64)
        lx, ly = square_local(t, xs, ys)
        on_square = np.maximum(abs(lx), abs(ly)) <= half
        shade = 0.75 + 0.25 * (lx / half)  # a gradient across the square shows its turn
        stripes = np.where((np.floor((ly + half) / (half / 2)) % 2) == 0, 1.0, 0.85)
        square = np.array([0.94, 0.94, 0.90]) * (shade * stripes)[..., None]
        picture = np.where(on_square[..., None], square, picture)
        layer[on_square] = SQUARE
        centre = ball_centre(t)
        r2 = ((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / radius**2
        on_ball = r2 <= 1.0
        ball = np.array([0.82, 0.16, 0.16]) * (1.0 - 0.35 * r2)[..., None] + 0.1 * (xs - centre[0] < 0)[..., None]
        picture = np.where(on_ball[..., None], ball, picture)
        layer[on_ball] = BALL
        pictures.append(np.clip(picture, 0.0, 1.0))
        layer_maps.append(layer)
    clip = np.stack(pictures)
    if quantise:
        clip = np.round(clip * 255.0) / 255.0
    layers = np.stack(layer_maps)

    flow = np.zeros((frames - 1, size, size, 2))
    for t in range(frames - 1):
        # Where each pixel of frame t+1 was in frame t, on each layer; the topmost layer decides.
        step = ball_centre(t) - ball_centre(t + 1)
        lx, ly = square_local(t + 1, xs, ys)
        c, si = math.cos(angle(t)), math.sin(angle(t))
        square_x = square_centre[0] + c * lx - si * ly
        square_y = square_centre[1] + si * lx + c * ly
        by_layer = {
            BACKGROUND: (np.full_like(xs, pan), np.zeros_like(ys)),
            SQUARE: (square_x - xs, square_y - ys),
            BALL: (np.full_like(xs, step[0]), np.full_like(ys, step[1])),
        }
        for name, (dx, dy) in by_layer.items():
            on = layers[t + 1] == name
            flow[t][on, 0], flow[t][on, 1] = dx[on], dy[on]
    return KnownMotionClip(clip, flow, _visible_in_both(layers, flow), layers)


def _visible_in_both(layers: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """A pixel of frame t+1 is valid where every bilinear neighbour of its position in frame t lies inside
    the frame and shows the same layer: that excludes occlusion, disocclusion and straddled edges."""
    count, height, width = flow.shape[:3]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    valid = np.zeros((count, height, width), dtype=bool)
    for t in range(count):
        x, y = xs + flow[t, ..., 0], ys + flow[t, ..., 1]
        ok = np.ones((height, width), dtype=bool)
        for nx in (np.floor(x), np.ceil(x)):
            for ny in (np.floor(y), np.ceil(y)):
                inside = (nx >= 0) & (ny >= 0) & (nx < width) & (ny < height)
                seen = layers[t][np.clip(ny, 0, height - 1).astype(int), np.clip(nx, 0, width - 1).astype(int)]
                ok &= inside & (seen == layers[t + 1])
        valid[t] = ok
    return valid


def save_clip_frames(frames: np.ndarray, folder: Path) -> list[Path]:
    """Write (F, H, W, 3) frames in [0, 1] as frame_0001.png ... for a restyle job."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(_as_float(frames)):
        path = folder / f"frame_{i + 1:04d}.png"
        Image.fromarray(np.round(np.clip(frame, 0, 1) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def load_frames(folder: Path) -> np.ndarray:
    """The PNG/JPEG frames of a folder, sorted by name, as (F, H, W, 3) floats in [0, 1]."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0 for p in paths])
