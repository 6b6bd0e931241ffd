"""Progress events with an estimate of the time left, from the time each kind of work took so far."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from ..protocol import Event, Progress

# Before the decoder has run once, assume it costs this many times the encoder per frame
# (the SD VAE decoder does about twice the encoder's work).
DECODE_PER_ENCODE = 2.0
STAGES = ("encode", "unsample", "resample", "decode")


class ProgressTracker:
    """Counts work units per stage (frames through the VAE, UNet window calls) and times them."""

    def __init__(
        self,
        emit: Callable[[Event], None],
        frames: int,
        unet_calls: dict[str, int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``unet_calls``: the UNet window calls each sampling pass ("unsample", "resample") makes."""
        self.emit = emit
        self.clock = clock
        self.frames = frames
        self.units = {"encode": frames, "unsample": 0, "resample": 0, **unet_calls, "decode": frames}
        self.done = dict.fromkeys(STAGES, 0)
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.frames_written = 0
        self.fraction = 0.0
        self.stage = "load"
        self._mark = clock()

    def start(self, stage: str) -> None:
        """Begin ``stage``: the time until the next :meth:`advance` is charged to it."""
        self.stage = stage
        self._mark = self.clock()
        if stage not in self.units:
            self.emit(Progress(stage=stage, step=0, total=0, frames_total=self.frames))

    def advance(self, step: int, total: int, window: int = 0, windows: int = 0, units: int = 1) -> None:
        """``units`` of the current stage finished; emit a progress event."""
        now = self.clock()
        self.seconds[self.stage] += now - self._mark
        self.done[self.stage] += units
        self._mark = now
        eta = self.eta()
        spent = sum(self.seconds.values())
        if eta is not None and spent + eta > 0:
            fraction = spent / (spent + eta)
        else:
            fraction = sum(self.done.values()) / max(1, sum(self.units.values()))
        # Estimates improve as the job runs; the bar never moves backwards.
        self.fraction = fraction = max(self.fraction, min(1.0, fraction))
        self.emit(
            Progress(
                stage=self.stage,
                step=step,
                total=total,
                window=window,
                windows=windows,
                frames_done=self.frames_written,
                frames_total=self.frames,
                fraction=round(fraction, 4),
                eta=None if eta is None else round(eta, 1),
            )
        )

    def eta(self) -> float | None:
        """Seconds left, or None while some remaining work has no measured rate to go by."""
        rate = {stage: self.seconds[stage] / self.done[stage] for stage in STAGES if self.done[stage]}
        if "resample" not in rate and "unsample" in rate:
            rate["resample"] = rate["unsample"]  # the same UNet calls
        if "unsample" not in rate and "resample" in rate:
            rate["unsample"] = rate["resample"]
        if "decode" not in rate and "encode" in rate:
            rate["decode"] = rate["encode"] * DECODE_PER_ENCODE
        left = 0.0
        for stage in STAGES:
            remaining = self.units[stage] - self.done[stage]
            if remaining > 0:
                if stage not in rate:
                    return None
                left += remaining * rate[stage]
        return left


class BatchProgress:
    """Tags each job's events with its place in a batch, and adds the batch's progress and ETA.

    Jobs may run one after another or at once (a cluster); the batch's fraction is the mean of the
    jobs' own, a finished or failed job counting as whole.
    """

    def __init__(self, emit: Callable[[Event], None], jobs: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.jobs = jobs
        self.clock = clock
        self.started = clock()
        self.fractions = [0.0] * jobs

    def emitter(self, job: int) -> Callable[[Event], None]:
        return lambda event: self.forward(job, event)

    def forward(self, job: int, event: Event) -> None:
        if self.jobs <= 1:
            self.emit(event)
            return
        changes: dict[str, object] = {"job": job}
        if isinstance(event, Progress):
            self.fractions[job] = max(self.fractions[job], event.fraction)
            fraction = sum(self.fractions) / self.jobs
            elapsed = self.clock() - self.started
            eta = elapsed * (1 - fraction) / fraction if fraction > 0.01 else None
            changes |= {
                "jobs": self.jobs,
                "batch_fraction": round(fraction, 4),
                "batch_eta": None if eta is None else round(eta, 1),
            }
        self.emit(dataclasses.replace(event, **changes))

    def finished(self, job: int) -> None:
        self.fractions[job] = 1.0
