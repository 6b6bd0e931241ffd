"""The restyle job: frames in, styled frames out, through unsampling and resampling."""

from __future__ import annotations

import functools
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .context import ContextWindowDenoiser, context_windows
from .control import ControlledUNet, make_hints
from .denoisers import Conditioning, Guidance, UNetDenoiser
from .devices import Placement, Residency, chunk_feed_forward, free_memory, is_out_of_memory, pick_placement
from .errors import Cancelled, UnsampleError
from .frames import common_size, list_frames, read_frames, write_frame
from .latent_cache import LatentCache, cache_key, styled_key
from .models import Components, load_components
from .progress import ProgressTracker
from .prompts import encode_prompt
from .protocol import Done, ErrorCode, Event, FrameWritten, JobSpec, Progress, WarningEvent
from .schedules import get_sigmas
from .unsampling import resample, unsample

log = logging.getLogger(__name__)


class Job:
    """One restyle run: its settings, where events go, and whether it was asked to stop."""

    def __init__(self, spec: JobSpec, emit: Callable[[Event], None], cancel: threading.Event | None = None) -> None:
        self.spec = spec
        self.emit = emit
        self.cancel = cancel or threading.Event()
        self.residency: Residency | None = None
        self.vae_batch = spec.vae_batch

    def warn(self, message: str) -> None:
        log.warning(message)
        self.emit(WarningEvent(message))

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def downloading(self, repo: str, done: int, total: int) -> None:
        """A model download's progress, file by file; cancelling stops it between files."""
        self.emit(Progress(stage="download", step=done, total=total))
        self.check_cancelled()


def restyle(spec: JobSpec, emit: Callable[[Event], None], cancel: threading.Event | None = None) -> Done:
    """Run a whole job; raises :class:`UnsampleError` (with a code) on anything the user can fix."""
    job = Job(spec, emit, cancel)
    started = time.monotonic()
    placement: Placement | None = None
    try:
        with torch.inference_mode(), ExitStack() as stack:
            # 1. Check inputs before loading anything heavy.
            problems = spec.validate()
            if problems:
                raise UnsampleError(ErrorCode.BAD_SETTINGS, "; ".join(problems))
            frames = list_frames(spec.frames)
            source_size = common_size(frames)
            size = _processing_size(spec, source_size, job.warn)
            out = _prepare_output(spec)
            work = Path(spec.work_dir) if spec.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
            work.mkdir(parents=True, exist_ok=True)
            refine = spec.inversion_refinement if spec.sampler == "euler" else 0
            if spec.inversion_refinement and not refine:
                job.warn(f"inversion refinement works with the euler sampler; {spec.sampler} unsamples without it")
            tracker = ProgressTracker(emit, len(frames), {})

            # 2. Load the models; the motion module decides how many frames a window may hold.
            tracker.start("load")
            placement = pick_placement(spec.device)
            components = load_components(spec, placement.dtype, placement.vae_dtype, job.warn, job.downloading)
            _check_size(size, components)
            windows = _windows(spec, len(frames), components.context_limit, job.warn)
            calls = spec.steps * len(windows)
            tracker.units |= {"unsample": calls * (1 + refine), "resample": calls}
            job.check_cancelled()

            # 3. Encode the prompts, then free the text encoders.
            job.residency = Residency(placement.device, spec.cpu_offload)
            job.residency.place(components.text_encoders)

            def encode(text: str, negative: bool = False) -> Conditioning:
                return encode_prompt(
                    components.tokenizers, components.text_encoders, text, placement.device, size, job.warn,
                    zeros_if_empty=negative and components.zero_empty_negative,
                )  # fmt: skip

            with job.residency.phase(*components.text_encoders):
                # The uncond of both passes, as diffusers' SDXL pipelines make it for each prompt.
                negative = encode(spec.negative_prompt, negative=True)
                unsample_guidance = Guidance(encode(spec.source_prompt), negative, spec.unsample_cfg)
                style_guidance = Guidance(encode(spec.prompt), negative, spec.cfg)
            components.text_encoders = []
            free_memory(placement.device)
            job.residency.place([components.unet, components.vae, components.controlnet])
            if spec.vae_tiling:
                _tile_vae(components.vae)
            if spec.chunk_feed_forward:
                for model in (components.unet, components.controlnet):
                    if model is not None:
                        chunk_feed_forward(model)
            job.vae_batch = spec.vae_batch or _default_vae_batch(components.vae)

            # 4. What earlier runs left: with the same frames and settings, the styled latents (an
            # interrupted job: only missing frames are decoded) or the unsampled ones (a new style).
            cache = LatentCache(spec.cache_dir, spec.cache_limit_mb * 2**20) if spec.cache_dir else None
            key = cache_key(spec, frames, size, placement) if cache else ""
            finished_key = styled_key(spec, key) if cache else ""
            styled = cache.get(finished_key) if cache else None
            noise = cache.get(key) if cache and styled is None else None
            unsample_cached = styled is not None or noise is not None
            if unsample_cached:
                tracker.units["unsample"] = 0
            if styled is not None:
                tracker.units["resample"] = tracker.units["encode"] = 0

            # 5. Frames to latents and ControlNet hints, a few frames at a time, then unsample and
            # resample with the style prompt.
            if styled is None:
                styled = _restyle_latents(job, components, placement, frames, size, windows, refine, noise, work,
                                          stack, (unsample_guidance, style_guidance), cache, key, tracker)  # fmt: skip
                if cache:
                    cache.put(finished_key, styled)
            styled = styled.to(placement.device)

            # 6. Latents to frames on disk, each written whole, in clip order; frames this very job
            # wrote before it was interrupted are kept.
            with job.residency.phase(components.vae):
                reused = _decode_frames(
                    job, components, placement, styled, frames, source_size, out, finished_key, tracker
                )
            seconds = round(time.monotonic() - started, 2)
            done = Done(
                frames=len(frames), out=str(out), seconds=seconds, unsample_cached=unsample_cached,
                frames_reused=reused,
            )  # fmt: skip
            emit(done)
            return done
    except UnsampleError:
        raise
    except Exception as error:
        if is_out_of_memory(error):
            raise UnsampleError(
                ErrorCode.OUT_OF_MEMORY,
                "out of memory. From the cheapest: feed-forward chunking, fewer frames per VAE call, CPU "
                "offload, VAE tiling, no ControlNet, a shorter context length (8), a lower resolution",
                str(error),
            ) from error
        raise
    finally:
        if placement is not None:
            free_memory(placement.device)


def _restyle_latents(
    job: Job,
    components: Components,
    placement: Placement,
    frames: list[Path],
    size: tuple[int, int],
    windows: list[list[int]],
    refine: int,
    noise: torch.Tensor | None,
    work: Path,
    stack: ExitStack,
    guidance: tuple[Guidance, Guidance],
    cache: LatentCache | None,
    key: str,
    tracker: ProgressTracker,
) -> torch.Tensor:
    """The styled latents: unsampled here unless ``noise`` came from the cache, then resampled."""
    spec = job.spec
    # Hints are cheap to remake and large (a frame each): they never outlive the job.
    scratch = stack.enter_context(tempfile.TemporaryDirectory(dir=work, ignore_cleanup_errors=True))
    hints = _open_hints(Path(scratch), spec, len(frames), size)
    with job.residency.phase(components.vae if noise is None else None):
        latents = _read_source(job, components, placement, frames, size, hints, tracker, encode=noise is None)
    unet = ControlledUNet(
        components.unet,
        components.controlnet,
        hints,
        spec.controlnet_strength,
        spec.control_start,
        spec.control_end,
        components.scheduler.config.num_train_timesteps,
    )
    denoiser = UNetDenoiser.from_scheduler(unet, components.scheduler, frames_in_batch=not components.motion)
    sigmas = get_sigmas(spec.scheduler, spec.steps, training_sigmas=denoiser.sigmas, family=spec.family)
    unsample_guidance, style_guidance = guidance
    passes = (job, denoiser, sigmas, windows, tracker)
    with job.residency.phase(components.unet, components.controlnet):
        if noise is None:
            unet.enabled = components.controlnet is not None and spec.control_in_unsample
            run_unsample = functools.partial(unsample, refine=refine)
            noise = _sampling_pass(*passes, "unsample", run_unsample, latents, unsample_guidance)
            if cache:
                cache.put(key, noise)
        noise = _blend_fresh_noise(noise.to(placement.device), spec.noise, spec.seed, float(sigmas[0]))
        unet.enabled = components.controlnet is not None
        return _sampling_pass(*passes, "resample", resample, noise, style_guidance)


def _check_size(size: tuple[int, int], components: Components) -> None:
    """Each UNet level halves the latents; the deepest must keep at least one latent pixel."""
    least = components.vae_scale_factor * 2 ** (len(components.unet.config.block_out_channels) - 1)
    if min(size) < least:
        raise UnsampleError(
            ErrorCode.BAD_FRAMES,
            f"frames of {size[0]}x{size[1]} are too small for this model: it needs at least {least} pixels a side",
        )


def _default_vae_batch(vae: Any) -> int:
    """Frames per VAE call when not set: 8 for SD 1.5's VAE; SDXL's at 1024 px needs about 3 GB a
    frame in fp32 (1.5 in fp16), so 1 (2 in fp16): more runs a 12 GB card out of memory."""
    if vae.config.scaling_factor != 0.13025:  # not SDXL's
        return 8
    return 2 if vae.dtype == torch.float16 else 1


def _tile_vae(vae: Any) -> None:
    """VAE tiling in diffusers starts above the VAE's own sample size (512 or 1024 px), so at those
    sizes it would never tile: tile from 256 px, in tiles of 256 px."""
    vae.enable_tiling()
    vae.tile_sample_min_size = min(vae.tile_sample_min_size, 256)
    vae.tile_latent_min_size = vae.tile_sample_min_size // (2 ** (len(vae.config.block_out_channels) - 1))


def _windows(spec: JobSpec, frames: int, limit: int | None, warn: Callable[[str], None]) -> list[list[int]]:
    length, overlap = spec.context, spec.overlap
    if limit is not None and length > limit:
        # More frames than the motion module was trained on blur its motion.
        length, overlap = limit, min(overlap, limit // 2)
        warn(f"this motion module sees {limit} frames at once: context {spec.context} lowered to {limit}")
    return context_windows(frames, length, overlap, spec.looped)


def _processing_size(spec: JobSpec, source: tuple[int, int], warn: Callable[[str], None]) -> tuple[int, int]:
    """The size the models work at: as asked, else the frames' own rounded down to a multiple of 8."""
    width, height = spec.width or source[0], spec.height or source[1]
    rounded = (width // 8 * 8, height // 8 * 8)
    if rounded != (width, height):
        warn(f"frames are {width}x{height}; processing at {rounded[0]}x{rounded[1]} (a multiple of 8)")
    return rounded


def _prepare_output(spec: JobSpec) -> Path:
    out = Path(spec.out).expanduser()
    if out.resolve() == Path(spec.frames).expanduser().resolve():
        raise UnsampleError(
            ErrorCode.BAD_SETTINGS, "the output folder is the input folder: the source frames would be overwritten"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".unsample-write-test-{id(spec)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UnsampleError(
            ErrorCode.OUTPUT_NOT_WRITABLE, f"cannot write to the output folder {out}: {error.strerror or error}"
        ) from error
    return out


def _open_hints(work: Path, spec: JobSpec, frames: int, size: tuple[int, int]) -> np.ndarray | None:
    if spec.control == "none":
        return None
    # On disk, memory-mapped: the hints of a long clip never sit in memory at once.
    shape = (frames, size[1], size[0], 3)
    return np.lib.format.open_memmap(work / "hints.npy", mode="w+", dtype=np.uint8, shape=shape)


def _read_source(
    job: Job,
    components: Components,
    placement: Placement,
    frames: list[Path],
    size: tuple[int, int],
    hints: np.ndarray | None,
    tracker: ProgressTracker,
    encode: bool = True,
) -> torch.Tensor | None:
    """Read the frames a batch at a time: ControlNet hints into ``hints``, and (if ``encode``)
    scaled VAE latents, (1, C, F, h, w) float32, returned."""
    vae = components.vae
    factor = components.vae_scale_factor
    latents = None
    if encode:
        shape = (1, vae.config.latent_channels, len(frames), size[1] // factor, size[0] // factor)
        latents = torch.empty(shape, dtype=torch.float32, device=placement.device)
    tracker.start("encode")
    batch = job.vae_batch
    for start in range(0, len(frames), batch):
        job.check_cancelled()
        pixels = read_frames(frames[start : start + batch], size)
        if hints is not None:
            hints[start : start + len(pixels)] = make_hints(job.spec.control, pixels)
        if latents is not None:
            images = torch.from_numpy(pixels).to(placement.device).permute(0, 3, 1, 2)
            images = images.to(vae.dtype) / 127.5 - 1
            # The mean of the latent distribution: deterministic, no sampling noise added.
            encoded = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
            latents[0, :, start : start + len(pixels)] = encoded.permute(1, 0, 2, 3).float()
        tracker.advance(min(start + batch, len(frames)), len(frames), units=len(pixels))
    return latents


def _sampling_pass(
    job: Job,
    denoiser: UNetDenoiser,
    sigmas: torch.Tensor,
    windows: list[list[int]],
    tracker: ProgressTracker,
    stage: str,
    run_pass: Callable[..., torch.Tensor],
    latents: torch.Tensor,
    guidance: Guidance,
) -> torch.Tensor:
    steps_done = 0
    total = len(sigmas) - 1

    def on_window(index: int, count: int) -> None:
        tracker.advance(steps_done + 1, total, index + 1, count)
        job.check_cancelled()

    def on_step(_step: object) -> None:
        nonlocal steps_done
        steps_done += 1

    model = ContextWindowDenoiser(denoiser, windows, job.spec.fusion, on_window)
    tracker.start(stage)
    return run_pass(
        model, latents, sigmas, sampler=job.spec.sampler, extra_args={"guidance": guidance}, callback=on_step
    )


def _blend_fresh_noise(noise: torch.Tensor, share: float, seed: int, sigma_max: float) -> torch.Tensor:
    """Mix in seeded Gaussian noise at the same scale: more freedom for the style, less fidelity."""
    if share <= 0:
        return noise
    generator = torch.Generator(device="cpu").manual_seed(seed)
    fresh = torch.randn(noise.shape, generator=generator, dtype=torch.float32).to(noise.device)
    return noise * math.sqrt(1 - share**2) + fresh * (sigma_max * share)


JOB_MARKER = ".unsample-job"  # in the output folder: the key of the styled latents its frames come from


def _decode_frames(
    job: Job,
    components: Components,
    placement: Placement,
    latents: torch.Tensor,
    frames: list[Path],
    source_size: tuple[int, int],
    out: Path,
    key: str,
    tracker: ProgressTracker,
) -> int:
    """Decode and write every frame; returns how many were already there from this same job."""
    kept = _frames_kept(out, key, frames)
    vae = components.vae
    tracker.start("decode")
    batch = job.vae_batch
    for start in range(0, len(frames), batch):
        job.check_cancelled()
        todo = [i for i in range(start, min(start + batch, len(frames))) if frames[i].name not in kept]
        if todo:
            chunk = latents[0, :, todo].permute(1, 0, 2, 3) / vae.config.scaling_factor
            images = vae.decode(chunk.to(vae.dtype), return_dict=False)[0]
            pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            for index, frame_pixels in zip(todo, pixels.permute(0, 2, 3, 1).cpu().numpy(), strict=True):
                write_frame(out / frames[index].name, frame_pixels, source_size)
        for index in range(start, min(start + batch, len(frames))):
            tracker.frames_written += 1
            job.emit(FrameWritten(name=frames[index].name, index=index))
        tracker.advance(min(start + batch, len(frames)), len(frames), units=min(batch, len(frames) - start))
    return len(kept)


def _frames_kept(out: Path, key: str, frames: list[Path]) -> set[str]:
    """Frames already in ``out`` that this same job (same styled latents) wrote before it stopped.
    Anything else there is overwritten; half-written temporary files are removed."""
    for partial in out.glob(".*.partial"):
        partial.unlink(missing_ok=True)
    marker = out / JOB_MARKER
    same_job = bool(key) and marker.is_file() and marker.read_text(encoding="utf-8").strip() == key
    if key:
        marker.write_text(key, encoding="utf-8")
    return {f.name for f in frames if (out / f.name).is_file()} if same_job else set()
