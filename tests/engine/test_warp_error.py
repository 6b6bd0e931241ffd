"""The warp error metric of tests/benchmarks/warp_error.py (figure 9) and its clip of known motion."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "warp_error.py"
_spec = importlib.util.spec_from_file_location("bench_warp_error", _PATH)
we = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(we)


def shifted_clip(frames=6, size=24, step=2):
    """A random texture moving right by ``step`` whole pixels a frame, with its backward flow and mask."""
    rng = np.random.default_rng(0)
    wide = rng.random((size, size + step * frames, 3))
    clip = np.stack([wide[:, step * frames - step * t :][:, :size] for t in range(frames)])
    flow = np.zeros((frames - 1, size, size, 2))
    flow[..., 0] = -step  # the point at x in frame t+1 was at x - step in frame t
    valid = np.ones((frames - 1, size, size), dtype=bool)
    valid[:, :, :step] = False  # came in from the left edge
    return clip, flow, valid


def test_a_clip_moved_along_its_flow_has_no_warp_error():
    clip, flow, valid = shifted_clip()
    assert we.warp_error(clip, flow, valid) == pytest.approx(0.0, abs=1e-20)
    # Without the warp the same clip differs a lot from frame to frame: the flow is what explains it.
    assert we.warp_error(clip, np.zeros_like(flow), valid) > 0.05
    # The wrong direction does not explain it either.
    assert we.warp_error(clip, -flow, valid) > 0.05


def test_flicker_raises_the_warp_error():
    clip, flow, valid = shifted_clip()
    rng = np.random.default_rng(1)
    mild = clip + rng.normal(0, 0.01, (clip.shape[0], 1, 1, 3))
    strong = clip + rng.normal(0, 0.05, (clip.shape[0], 1, 1, 3))
    assert 0 < we.warp_error(mild, flow, valid) < we.warp_error(strong, flow, valid)


def test_invalid_pixels_are_left_out():
    clip, flow, valid = shifted_clip()
    spoiled = clip.copy()
    spoiled[1:, 5:9, 5:9] = 1.0 - spoiled[1:, 5:9, 5:9]  # an "occluder" that does not follow the motion
    assert we.warp_error(spoiled, flow, valid) > 1e-3
    masked = valid.copy()
    masked[:, 5:9, 5:9] = False
    # Frame t's spoiled patch also lands on pixels of frame t+1 just right of it: leave those out too.
    masked[:, 5:11, 5:11] = False
    assert we.warp_error(spoiled, flow, masked) == pytest.approx(0.0, abs=1e-20)


def test_samples_outside_the_frame_do_not_count():
    clip, flow, valid = shifted_clip()
    everywhere = np.ones_like(valid)  # the mask forgets the edge; the warp still knows it
    assert we.warp_error(clip, flow, everywhere) == pytest.approx(0.0, abs=1e-20)


def test_uint8_frames_are_read_as_0_to_1():
    clip, flow, valid = shifted_clip()
    noisy = np.clip(clip + np.random.default_rng(2).normal(0, 0.05, clip.shape), 0, 1)
    as_bytes = np.round(noisy * 255).astype(np.uint8)
    assert we.warp_error(as_bytes, flow, valid) == pytest.approx(we.warp_error(as_bytes / 255.0, flow, valid))


def test_the_demo_like_clip_moves_along_its_exact_flow():
    clip = we.demo_like_clip(frames=8, size=64)
    assert clip.frames.shape == (8, 64, 64, 3) and clip.flow.shape == (7, 64, 64, 2)
    moved = we.warp_error(clip.frames, clip.flow, clip.valid)
    still = we.warp_error(clip.frames, np.zeros_like(clip.flow), clip.valid)
    assert moved < still / 10  # only bilinear resampling and 8-bit rounding are left
    # Every layer, on its own, follows its flow: the ball, the spinning square and the panning hills.
    for layer in (we.BACKGROUND, we.SQUARE, we.BALL):
        on = clip.valid & (clip.layers[1:] == layer)
        assert on.sum() > 100
        assert we.warp_error(clip.frames, clip.flow, on) < we.warp_error(clip.frames, np.zeros_like(clip.flow), on) / 3
    # Hills uncovered by the ball (the ball sat where they were in frame t) are not valid.
    ys, xs = np.mgrid[0:64, 0:64]
    uncovered = [
        (clip.layers[t + 1] == we.BACKGROUND)
        & (clip.layers[t][ys, np.clip(np.round(xs + clip.flow[t, ..., 0]).astype(int), 0, 63)] == we.BALL)
        for t in range(7)
    ]
    uncovered = np.stack(uncovered)
    assert uncovered.sum() > 10 and not clip.valid[uncovered].any()


def test_shapes_are_checked():
    clip, flow, valid = shifted_clip()
    with pytest.raises(ValueError, match="want frames"):
        we.warp_error(clip, flow[:-1], valid)
