"""Many strips at once: each cluster worker restyles whole jobs, taking the next when one ends."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ..errors import UnsampleError, cancelled
from ..job.progress import BatchProgress
from ..protocol import ErrorCode, ErrorEvent, Event, JobSpec
from .actors import StripWorker, worker_name, worker_result

POLL_SECONDS = 0.2  # how often the workers' progress events are collected
STOP_GRACE_SECONDS = 10.0  # after a cancel, how long workers get to stop at a check point


def run_strips(
    ray: ModuleType,
    specs: list[JobSpec],
    workers: list[Any],
    emit: Callable[[Event], None],
    cancel: threading.Event,
) -> list[UnsampleError | None]:
    """Run every job on the workers (StripWorker actors); returns each job's error or None.

    A job that fails is reported and the others go on; a cancel stops them all and raises.
    """
    batch = BatchProgress(emit, len(specs))
    pending = collections.deque(range(len(specs)))
    idle = list(workers)
    running: dict[Any, tuple[Any, int]] = {}  # the run call -> (its worker, its job)
    results: list[UnsampleError | None] = [None] * len(specs)
    while pending or running:
        if cancel.is_set():
            _stop(ray, running)
            raise cancelled(cancel)
        if pending and not idle and not running:  # every worker lost beyond restarting
            lost = UnsampleError(ErrorCode.CLUSTER, "every cluster worker was lost: the strips left were not run")
            for job in pending:
                results[job] = lost
                batch.forward(job, ErrorEvent(code=lost.code.value, message=lost.message))
            break
        while pending and idle:
            worker, job = idle.pop(0), pending.popleft()
            running[worker.run.remote(specs[job].to_json())] = (worker, job)
        ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
        for worker, job in running.values():
            _forward(ray, worker, job, batch)
        for call in ready:
            worker, job = running.pop(call)
            _forward(ray, worker, job, batch)  # what it said between the last collection and its end
            results[job] = _outcome(ray, call)
            if results[job] is not None:
                error = results[job]
                batch.forward(job, ErrorEvent(code=error.code.value, message=error.message, detail=error.detail))
            batch.finished(job)
            lost = results[job] is not None and results[job].code == ErrorCode.CLUSTER
            if not lost:  # a worker Ray could not bring back takes no more strips
                idle.append(worker)
    return results


def make_workers(ray: ModuleType, count: int, options: dict[str, Any], threads: int) -> list[Any]:
    # Threads: one runs the job, others hand over events and take the stop request meanwhile.
    remote = ray.remote(StripWorker)
    return [
        remote.options(name=worker_name("strip", i), max_concurrency=3, **options).remote(threads) for i in range(count)
    ]


def _forward(ray: ModuleType, worker: Any, job: int, batch: BatchProgress) -> None:
    try:
        events = ray.get(worker.take_events.remote())
    except ray.exceptions.RayActorError:
        return  # the worker is being restarted: its job is retried and reports again
    for event in events:
        batch.forward(job, event)


def _outcome(ray: ModuleType, call: Any) -> UnsampleError | None:
    try:
        worker_result(ray, call)
    except UnsampleError as error:
        # Ray's wrapper of the worker's error, or the cluster error for a worker lost for good.
        return error.cause if isinstance(error, ray.exceptions.RayTaskError) else error
    except ray.exceptions.RayTaskError as error:  # our bug in the worker: reported whole
        return UnsampleError(ErrorCode.INTERNAL, f"internal error: {error.cause}", str(error))
    return None


def _stop(ray: ModuleType, running: dict[Any, tuple[Any, int]]) -> None:
    """Ask every busy worker to stop at its next check point, and wait a little for them to."""
    for worker, _ in running.values():
        worker.stop.remote()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    remaining = list(running)
    while remaining and time.monotonic() < deadline:
        _, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=POLL_SECONDS)
