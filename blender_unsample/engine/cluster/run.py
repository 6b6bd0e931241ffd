"""Run jobs on a Ray cluster: one long strip by its windows, or many strips at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from ..errors import UnsampleError
from ..job.devices import pick_placement
from ..job.pipeline import restyle
from ..protocol import ErrorCode, Event, JobSpec
from .actors import WindowWorker, worker_name
from .auth import ClusterAccess
from .connect import ClusterInfo, describe, session
from .strip_workers import make_workers, run_strips
from .windows import RemoteWindows

log = logging.getLogger(__name__)

# A worker lost mid-job (its process or its node) is restarted by Ray this many times, and the
# calls it had in hand are run again on the new one: the job goes on with the same frames.
RESTARTS = 3


def run_on_cluster(
    specs: list[JobSpec],
    address: str,
    workers: int,
    emit: Callable[[Event], None],
    cancel: threading.Event,
    access: ClusterAccess | None = None,
) -> list[UnsampleError | None]:
    """Run the jobs on the cluster at ``address`` ("auto": this machine) with ``workers`` workers
    (0: one per GPU, or one on a cluster without GPUs), joined as ``access`` allows; returns each
    job's error or None.

    One job shares its context windows among the workers at every step; several jobs run one
    per worker. A cancel raises :class:`Cancelled` after every worker was told to stop.
    """
    with session(address, access) as ray:
        info = describe(ray, address)
        count = workers or max(1, info.gpus)
        options = worker_options(info, count)
        log.info("cluster %s: %d nodes, %d GPUs, %d CPUs; %d workers", address, info.nodes, info.gpus, info.cpus, count)
        threads = _cpu_threads(specs[0])
        if len(specs) == 1:
            return [_run_windows(ray, specs[0], count, options, threads, emit, cancel)]
        pool = make_workers(ray, min(count, len(specs)), options, threads)
        try:
            return run_strips(ray, specs, pool, emit, cancel)
        finally:
            _kill(ray, pool)


def worker_options(info: ClusterInfo, count: int) -> dict[str, Any]:
    """Ray options of each worker: a GPU each (a share of one when asked for more workers than
    GPUs), else a CPU; restarted after a crash, with the calls it had in hand retried."""
    if info.gpus:
        resources = {"num_gpus": min(1.0, info.gpus / count)}
    else:
        resources = {"num_cpus": min(1.0, max(info.cpus, 1) / count)}
    return {**resources, "max_restarts": RESTARTS, "max_task_retries": RESTARTS}


def _run_windows(
    ray: ModuleType,
    spec: JobSpec,
    count: int,
    options: dict[str, Any],
    threads: int,
    emit: Callable[[Event], None],
    cancel: threading.Event,
) -> UnsampleError | None:
    remote = ray.remote(WindowWorker)
    # Two threads: one evaluates windows, the other takes a stop request meanwhile.
    workers = [
        remote.options(name=worker_name("window", i), max_concurrency=2, **options).remote(spec.to_json(), threads)
        for i in range(count)
    ]
    try:
        restyle(spec, emit, cancel, window_pool=RemoteWindows(ray, workers, cancel))
    except UnsampleError as error:
        if error.code == ErrorCode.CANCELLED:
            raise
        return error
    finally:
        _kill(ray, workers)
    return None


def _cpu_threads(spec: JobSpec) -> int:
    """Workers computing on the CPU use this process's thread count (0: leave Ray's setting)."""
    try:
        on_cpu = pick_placement(spec.device).device.type == "cpu"
    except UnsampleError:
        return 0
    return torch.get_num_threads() if on_cpu else 0


def _kill(ray: ModuleType, workers: list[Any]) -> None:
    for worker in workers:
        ray.kill(worker, no_restart=True)
