import cv2  # test-only: the reference annotator
import numpy as np
import pytest
import torch
from canny_images import IMAGES, make_image

from blender_unsample.engine.job.controlnet import canny_edges, make_hints


def square(size=32, lo=8, hi=24):
    image = torch.zeros(1, 3, size, size)
    image[..., lo:hi, lo:hi] = 1.0
    return image


def test_canny_finds_the_outline_of_a_square_and_nothing_else():
    edges = canny_edges(square())[0, 0]
    assert edges.shape == (32, 32)
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[6:26, 6:26] = True
    ring[10:22, 10:22] = False
    assert edges[~ring].sum() == 0, "no edges away from the square's border"
    assert edges[ring].sum() >= 4 * 12, "the border is traced on every side"
    for row in range(10, 22):  # each row crossing the square has an edge on each side
        assert edges[row, :16].sum() >= 1 and edges[row, 16:].sum() >= 1


def test_canny_edges_are_thin():
    edges = canny_edges(square())[0, 0]
    assert int(edges[16].sum()) <= 4  # a straight vertical border is one or two pixels wide


def test_flat_images_have_no_edges_and_three_equal_channels():
    edges = canny_edges(torch.full((2, 3, 16, 16), 0.5))
    assert edges.shape == (2, 3, 16, 16)
    assert edges.sum() == 0
    edges = canny_edges(square())
    assert torch.equal(edges[:, 0], edges[:, 2])


def test_hints_are_uint8_frames():
    frames = (square(32).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    canny = make_hints("canny", frames)
    assert canny.dtype == np.uint8 and canny.shape == frames.shape
    assert set(np.unique(canny)) == {0, 255}
    assert make_hints("tile", frames) is frames


# --- against the annotator the canny ControlNets were trained on: cv2.Canny(rgb_uint8, 100, 200) ---


def _edges(frames: np.ndarray, low: float = 100, high: float = 200) -> np.ndarray:
    """Our edge maps as booleans (N, H, W), from uint8 RGB frames (N, H, W, 3)."""
    rgb = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255
    return canny_edges(rgb, low, high)[:, 0].numpy() > 0


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_canny_hints_match_opencvs_canny(name):
    image = make_image(name)
    reference = cv2.Canny(image, 100, 200) > 0
    hint = make_hints("canny", image[None])[0]
    assert hint.shape == image.shape and hint.dtype == np.uint8
    assert (hint == hint[..., :1]).all(), "three equal channels"
    assert reference.sum() > 100, "the image has edges to compare"
    # Pixel for pixel, as the README says: an IoU or count tolerance would hide a rule decided otherwise.
    np.testing.assert_array_equal(hint[..., 0] > 0, reference)


@pytest.mark.parametrize("name", ["rounding", "texture", "spiral"])
def test_canny_decides_ties_and_thresholds_as_opencv_does(name):
    # Steps landing exactly on the thresholds, equal magnitudes side by side, a chain kept only by
    # hysteresis: every pixel as OpenCV decides it, not only most of them.
    image = make_image(name, seed=3)
    np.testing.assert_array_equal(_edges(image[None])[0], cv2.Canny(image, 100, 200) > 0)


@pytest.mark.parametrize(("low", "high"), [(50, 150), (150.7, 100.2), (0, 30)])
def test_canny_thresholds_mean_what_they_mean_to_opencv(low, high):
    image = make_image("photo", seed=1)
    np.testing.assert_array_equal(_edges(image[None], low, high)[0], cv2.Canny(image, low, high) > 0)


def test_canny_of_a_batch_is_the_canny_of_each_frame():
    frames = np.stack([make_image(name, seed=5)[:90, :110] for name in ("shapes", "photo", "odd_size", "spiral")])
    edges = _edges(frames)
    for frame, ours in zip(frames, edges, strict=True):
        np.testing.assert_array_equal(ours, cv2.Canny(frame, 100, 200) > 0)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (5, 1), (2, 3), (3, 3)])
def test_canny_of_tiny_frames(size):
    image = np.random.default_rng(7).integers(0, 256, (*size, 3)).astype(np.uint8)
    np.testing.assert_array_equal(_edges(image[None])[0], cv2.Canny(image, 100, 200) > 0)
