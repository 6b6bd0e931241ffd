import numpy as np
import torch

from blender_unsample.engine.control import canny_edges, make_hints


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
