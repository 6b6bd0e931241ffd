"""A batch of exported strips on one worker, run at once on a Ray cluster (the Cluster preference).

The worker gets one ``--job`` per strip and tags every event with its job's index; this routes each
event to its strip, hands on each strip's result as its ``done`` lands (the runner imports it while
the others still run), and at the end gives every strip that got neither a result nor an error of
its own the batch's failure. No bpy here: the runner brings the strips and the callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ...engine.protocol import Done, ErrorCode, ErrorEvent, FrameWritten, Progress, WarningEvent
from ..worker.process import Worker

# Errors about the batch as a whole rather than about one strip: the strips that never got an
# outcome of their own share them.
BATCH_ERRORS = {ErrorCode.CLUSTER.value, ErrorCode.WORKER_SETUP.value, ErrorCode.BAD_SETTINGS.value}


class ClusterBatch:
    """The strips ``jobs`` (in the order of the worker's ``--job`` flags) on one running ``worker``."""

    def __init__(
        self,
        jobs: list[Any],
        worker: Worker,
        on_progress: Callable[[Any, Progress], None],
        on_done: Callable[[Any, Done], None],
        on_failed: Callable[[Any, ErrorEvent | None], None],  # None: cancelled
    ) -> None:
        self.jobs = jobs
        self.worker = worker
        self.on_progress, self.on_done, self.on_failed = on_progress, on_done, on_failed
        self.open = set(range(len(jobs)))  # strips without an outcome yet
        self.frames_done = [0] * len(jobs)
        self.errors: list[ErrorEvent] = []
        self.cancel_sent_at: float | None = None

    @property
    def finished_strips(self) -> int:
        return len(self.jobs) - len(self.open)

    def cancel(self) -> None:
        """One cancel to the worker, which stops every strip and every cluster worker."""
        if self.cancel_sent_at is None:
            self.worker.cancel()
            self.cancel_sent_at = time.monotonic()

    def tick(self, limit: int, grace: float) -> bool:
        """Apply up to ``limit`` events; True once the worker has ended and every strip has its outcome."""
        for event in self.worker.take_events(limit):
            self._apply(event)
        if self.cancel_sent_at is not None and time.monotonic() - self.cancel_sent_at > grace:
            self.worker.kill()
        if not self.worker.finished():
            return False
        leftover = self._leftover_error()
        for index in sorted(self.open):
            self.on_failed(self.jobs[index], leftover)
        self.open.clear()
        return True

    def _apply(self, event: object) -> None:
        index = getattr(event, "job", 0)
        if not 0 <= index < len(self.jobs):
            return  # not a strip of this batch: nothing to route it to
        job = self.jobs[index]
        if isinstance(event, Progress):
            self.frames_done[index] = max(self.frames_done[index], event.frames_done)
            self.on_progress(job, event)
        elif isinstance(event, FrameWritten):
            self.frames_done[index] = max(self.frames_done[index], event.index + 1)
        elif isinstance(event, WarningEvent):
            job.warnings.append(event.message)
        elif isinstance(event, ErrorEvent):
            self.errors.append(event)
            if index in self.open and self.cancel_sent_at is None:
                self.open.discard(index)
                job.error = event
                self.on_failed(job, event)
        elif isinstance(event, Done) and index in self.open and self.cancel_sent_at is None:
            # Cancelled: nothing more is added, even a strip that finished meanwhile (its frames stay
            # in its folder, and Resume takes them from there).
            self.open.discard(index)
            job.done = event
            self.on_done(job, event)

    def _leftover_error(self) -> ErrorEvent | None:
        """What the strips still open at the end are told: cancelled (None), the batch's own error, or
        that the worker stopped without saying why."""
        if self.cancel_sent_at is not None:
            return None
        batch_errors = [e for e in self.errors if e.code in BATCH_ERRORS]
        return batch_errors[0] if batch_errors else self.worker.failure()
