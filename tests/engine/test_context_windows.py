import itertools

import pytest
import torch

from blender_unsample.engine.method.context_windows import ContextWindowDenoiser, context_windows, fusion_weights


def coverage(windows, frames):
    counts = [0] * frames
    for window in windows:
        for index in window:
            counts[index] += 1
    return counts


def test_a_short_clip_is_one_window():
    assert context_windows(10, 16, 4) == [list(range(10))]
    assert context_windows(16, 16, 4, looped=True) == [list(range(16))]


@pytest.mark.parametrize(("frames", "length", "overlap"), [(40, 16, 4), (17, 16, 4), (300, 16, 4), (33, 8, 2)])
def test_windows_cover_every_frame_with_the_asked_overlap(frames, length, overlap):
    windows = context_windows(frames, length, overlap)
    assert all(len(w) == length and w == list(range(w[0], w[0] + length)) for w in windows)
    assert min(coverage(windows, frames)) >= 1
    assert windows[0][0] == 0 and windows[-1][-1] == frames - 1
    for before, after in itertools.pairwise(windows):
        assert len(set(before) & set(after)) >= overlap


def test_forty_frames_in_windows_of_sixteen_overlapping_four():
    assert [w[0] for w in context_windows(40, 16, 4)] == [0, 12, 24]


def test_looped_windows_wrap_from_the_last_frame_to_the_first():
    windows = context_windows(40, 16, 4, looped=True)
    assert min(coverage(windows, 40)) >= 1
    seam = [w for w in windows if 39 in w and 0 in w]
    assert seam, "some window must hold both the last and the first frame"
    assert seam[0].index(0) == seam[0].index(39) + 1  # in playback order across the seam


def test_pyramid_weights_peak_in_the_middle():
    assert fusion_weights(6, "pyramid").tolist() == [1, 2, 3, 3, 2, 1]
    assert fusion_weights(4, "flat").tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError):
        fusion_weights(4, "gaussian")


def test_fusion_is_the_weighted_average_of_the_windows():
    windows = context_windows(10, 4, 2)  # starts 0, 2, 4, 6
    seen = []

    def window_id(x, sigma, frames):
        seen.append(list(frames))
        return torch.full_like(x, float(len(seen)))  # window n predicts the constant n

    model = ContextWindowDenoiser(window_id, windows, "pyramid")
    out = model(torch.zeros(1, 1, 10, 1, 1), 1.0)
    assert seen == windows
    # Frame 3 is position 3 (weight 1) of window 1 and position 1 (weight 2) of window 2.
    assert float(out[0, 0, 3]) == pytest.approx((1 * 1 + 2 * 2) / 3)
    assert float(out[0, 0, 0]) == 1.0  # only in window 1


@pytest.mark.parametrize("looped", [False, True])
def test_fusing_identical_predictions_changes_nothing(looped):
    x = torch.randn(1, 4, 23, 3, 3)
    model = ContextWindowDenoiser(lambda x, sigma, frames: x * 2, context_windows(23, 8, 3, looped), "pyramid")
    torch.testing.assert_close(model(x, 1.0), x * 2)


def test_each_window_is_reported_and_can_stop_the_step():
    reports = []

    def on_window(index, count):
        reports.append((index, count))
        if index == 1:
            raise KeyboardInterrupt

    model = ContextWindowDenoiser(lambda x, sigma, frames: x, context_windows(40, 16, 4), "flat", on_window)
    with pytest.raises(KeyboardInterrupt):
        model(torch.zeros(1, 1, 40, 1, 1), 1.0)
    assert reports == [(0, 3), (1, 3)]
