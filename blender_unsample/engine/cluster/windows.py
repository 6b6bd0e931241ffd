"""One long strip over many workers: at each step its context windows are shared among them.

The driver (this process) runs the sampler and the fusion of :class:`ContextWindowDenoiser`; the
workers only evaluate windows. Since the fusion adds the windows' outputs in the same order as on
one GPU, and each window's output does not depend on who computed it, the frames are the same.
Only latents travel: a window of 16 SD 1.5 frames at 512 px is 1 MiB each way per step.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..errors import cancelled
from ..method.context_windows import WindowEvaluator
from ..method.denoisers import Conditioning, Guidance
from .actors import worker_result

CANCEL_POLL_SECONDS = 0.05  # how often a wait for the workers looks at the job's cancel


@dataclasses.dataclass
class ExchangeStats:
    """What one model evaluation over the clip cost, for the benchmark report."""

    seconds: float  # wall time of the evaluation, sending and collecting included
    compute_seconds: float  # the busiest worker's time inside its UNet calls
    bytes_sent: int
    bytes_received: int
    windows: int
    frames: int
    windows_by_worker: dict[str, int]  # each worker's share of the windows, by host and process


class RemoteWindows:
    """The window pool of a job (see ``job.pipeline.WindowPool``): its workers and what it shares."""

    def __init__(self, ray: ModuleType, workers: list[Any], cancel: threading.Event | None = None) -> None:
        self.ray = ray
        self.workers = workers
        self.cancel = cancel or threading.Event()
        self.stats: list[ExchangeStats] = []
        self._hints: tuple[int, str, Any] | None = None  # (id of the array, key, ref)

    def evaluator(self, guidance: Guidance, control: bool, hints: np.ndarray | None) -> WindowEvaluator:
        shared = [uuid.uuid4().hex, self.ray.put((_on_cpu(guidance), control)), *self._share_hints(hints)]

        def evaluate(x: torch.Tensor, sigma: float, windows: list[list[int]], extra: dict[str, Any]) -> Iterator:
            return self._evaluate(shared, x, sigma, windows)

        return evaluate

    def _share_hints(self, hints: np.ndarray | None) -> tuple[str, Any]:
        if hints is None:
            return "", None
        if self._hints is None or self._hints[0] != id(hints):
            # Once per job, into Ray's object store; workers on one node map it without a copy.
            self._hints = (id(hints), uuid.uuid4().hex, self.ray.put(np.asarray(hints)))
        return self._hints[1], self._hints[2]

    def _evaluate(self, shared: list[Any], x: torch.Tensor, sigma: float, windows: list[list[int]]) -> Iterator:
        started = time.perf_counter()
        sent = received = 0
        calls = []
        for worker, share in zip(self.workers, split_evenly(windows, len(self.workers)), strict=False):
            if not share:
                continue
            # As numpy arrays: Ray passes those without pickling their data, twice as fast as tensors.
            parts = [x.index_select(2, torch.tensor(w, device=x.device)).cpu().numpy() for w in share]
            sent += sum(p.nbytes for p in parts)
            calls.append(worker.denoise.remote(shared, parts, float(sigma), share))
        busiest = 0.0
        shares: dict[str, int] = {}
        for call in calls:
            self._wait(call)
            # A lost worker: Ray retried it as often as allowed.
            outputs, seconds, worker_id = worker_result(self.ray, call)
            busiest = max(busiest, seconds)
            received += sum(o.nbytes for o in outputs)
            shares[worker_id] = shares.get(worker_id, 0) + len(outputs)
            yield from (torch.tensor(o) for o in outputs)  # a copy: what Ray hands over is read-only
        wall = time.perf_counter() - started
        self.stats.append(ExchangeStats(wall, busiest, sent, received, len(windows), x.shape[2], shares))

    def _wait(self, call: Any) -> None:
        """Until ``call`` is done; a cancel meanwhile stops every worker between two windows and
        raises, without waiting for the rest of their shares."""
        while not self.ray.wait([call], timeout=CANCEL_POLL_SECONDS)[0]:
            if self.cancel.is_set():
                for worker in self.workers:
                    worker.stop.remote()
                raise cancelled(self.cancel)


def split_evenly(windows: list[list[int]], workers: int) -> list[list[list[int]]]:
    """Consecutive runs of windows, one per worker, their lengths differing by at most one."""
    size, extra = divmod(len(windows), workers)
    shares, start = [], 0
    for i in range(workers):
        end = start + size + (1 if i < extra else 0)
        shares.append(windows[start:end])
        start = end
    return shares


def _on_cpu(guidance: Guidance) -> Guidance:
    """The prompts as plain CPU tensors, to travel to workers on other devices and machines."""

    def move(conditioning: Conditioning | None) -> Conditioning | None:
        if conditioning is None:
            return None
        added = None if conditioning.added is None else {k: v.cpu() for k, v in conditioning.added.items()}
        return Conditioning(conditioning.embeds.cpu(), added)

    return Guidance(move(guidance.cond), move(guidance.uncond), guidance.scale)
