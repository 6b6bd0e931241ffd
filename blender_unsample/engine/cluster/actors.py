"""The cluster's workers: Ray actors that load their models once and keep them.

These classes are plain Python; the driver turns them into actors with ``ray.remote`` and its
own resource options (a GPU each, or a CPU on a cluster without GPUs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import numpy as np
import torch

from ..errors import UnsampleError
from ..job.denoiser import build_denoiser
from ..job.devices import chunk_feed_forward, pick_placement
from ..job.pipeline import restyle
from ..method.denoisers import Guidance
from ..models import Components, load_components
from ..protocol import RELOAD_ROLES, Done, ErrorCode, Event, JobSpec, settings_with

# What load_components reads from a job, and the memory options that change models in place (the
# roles that reload, protocol.RELOAD_ROLES): jobs that agree on these share one set of loaded models.
MODEL_SETTINGS = settings_with(*RELOAD_ROLES)


WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"  # this process, among a cluster's workers


def model_key(spec: JobSpec) -> str:
    return json.dumps({name: getattr(spec, name) for name in MODEL_SETTINGS}, sort_keys=True)


def worker_name(role: str, index: int) -> str:
    """Named, so that ``ray list actors`` shows whose they are; unique, so jobs never clash."""
    return f"unsample-{role}-{index}-{uuid.uuid4().hex[:8]}"


def worker_result(ray: Any, call: Any) -> Any:
    """What a worker's call returned. A worker Ray could not bring back raises the cluster error; a
    failure inside the call comes as the worker raised it (Ray's wrapper is an instance of it)."""
    try:
        return ray.get(call)
    except ray.exceptions.RayActorError as error:
        raise UnsampleError(ErrorCode.CLUSTER, "a cluster worker was lost and did not come back", str(error)) from error


def use_threads(threads: int) -> None:
    """On the CPU, compute with as many threads as the one-process run would: Ray gives each worker
    one thread, and a matrix product's sums may round differently with another split of the work."""
    if threads > 0:
        torch.set_num_threads(threads)


class WindowWorker:
    """Evaluates the UNet (with its ControlNet) on context windows of one job, a step at a time.

    Each call carries references to what the pass shares (prompts, whether ControlNet is on, the
    clip's hints); a worker fetches them once and keeps them, so a worker restarted by Ray after a
    crash picks them up again from the same references.
    """

    def __init__(self, spec_json: str, threads: int = 0) -> None:
        use_threads(threads)
        spec = JobSpec.from_dict(json.loads(spec_json))
        placement = pick_placement(spec.device)
        components = load_components(spec, placement.dtype, placement.vae_dtype)
        self.device = placement.device
        models = [m for m in (components.unet, components.controlnet) if m is not None]
        for model in models:
            model.to(self.device)
            if spec.chunk_feed_forward:
                chunk_feed_forward(model)
        self.unet, self.denoiser = build_denoiser(components, spec, None)  # hints come with each pass
        self.controlnet = components.controlnet is not None
        self.guidance: Guidance | None = None
        self.shared_keys: tuple[str, str] = ("", "")
        self.stopping = threading.Event()  # set by stop(), on another of the actor's threads

    def denoise(
        self, shared: list[Any], windows: list[np.ndarray], sigma: float, frames: list[list[int]]
    ) -> tuple[list[np.ndarray], float, str]:
        """The denoised windows, the seconds spent computing them and who computed them (host and
        process: the driver counts each worker's share).

        ``shared`` is [pass key, ref to (guidance, control on), hints key, ref to hints or None]:
        references inside a list, which Ray hands over unresolved, so they are fetched only when new.
        """
        import ray  # only ever imported inside a cluster worker

        started = time.perf_counter()
        pass_key, pass_ref, hints_key, hints_ref = shared
        if hints_key != self.shared_keys[1]:
            self.unet.hints = None if hints_ref is None else ray.get(hints_ref)
        if pass_key != self.shared_keys[0]:
            self.guidance, control = ray.get(pass_ref)
            self.unet.enabled = self.controlnet and control
        self.shared_keys = (pass_key, hints_key)
        outputs = []
        with torch.inference_mode():
            for x, window in zip(windows, frames, strict=True):
                if self.stopping.is_set():
                    break  # the job was cancelled: the driver no longer waits for the rest of the share
                denoised = self.denoiser(
                    torch.tensor(x, device=self.device), sigma, frames=window, guidance=self.guidance
                )
                outputs.append(denoised.cpu().numpy())
        return outputs, time.perf_counter() - started, WORKER_ID

    def stop(self) -> None:
        """Stop between windows: the call in hand returns before its share is done, and none runs after."""
        self.stopping.set()


class StripWorker:
    """Restyles whole jobs, one at a time, keeping the models of the last one for the next.

    Ray runs its methods on threads (the actor's ``max_concurrency``), so the driver can collect
    progress events and ask for a stop while a job runs.
    """

    def __init__(self, threads: int = 0) -> None:
        use_threads(threads)
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.cancel = threading.Event()
        self.models: tuple[str, Components] | None = None

    def run(self, spec_json: str) -> Done:
        self.cancel.clear()
        return restyle(JobSpec.from_dict(json.loads(spec_json)), self._emit, self.cancel, load=self._load)

    def take_events(self) -> list[Event]:
        with self.lock:
            events, self.events = self.events, []
        return events

    def stop(self) -> None:
        self.cancel.set()

    def _emit(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def _load(self, spec: JobSpec, *args: Any, **kwargs: Any) -> Components:
        key = model_key(spec)
        if self.models is None or self.models[0] != key:
            self.models = None  # let the last job's models go before the next ones load
            self.models = (key, load_components(spec, *args, **kwargs))
        # A copy of the record: a job drops its text encoders from its own copy once it has used them.
        return dataclasses.replace(self.models[1])
