import pytest

from blender_unsample.engine.job.progress import ProgressTracker
from blender_unsample.engine.protocol import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_eta_comes_from_measured_rates_and_the_bar_never_goes_back():
    events, clock = [], Clock()
    tracker = ProgressTracker(events.append, frames=10, unet_calls={"unsample": 4, "resample": 4}, clock=clock)
    tracker.start("encode")
    clock.now += 1.0  # 10 frames encoded in 1 s
    tracker.advance(10, 10, units=10)
    assert events[-1].eta is None  # no UNet call timed yet
    tracker.start("unsample")
    for window in range(4):
        clock.now += 2.0
        tracker.advance(1, 1, window + 1, 4)
    # Left: 4 resample calls at 2 s, 10 decoded frames at 2 x 0.1 s.
    assert events[-1].eta == pytest.approx(4 * 2.0 + 10 * 0.2)
    fractions = [e.fraction for e in events if isinstance(e, Progress)]
    assert fractions == sorted(fractions)
    assert 0 < fractions[-1] < 1
