"""The restyle job: frames in, styled frames out, through unsampling and resampling.

:func:`restyle` reads as the job's numbered steps; :class:`RestyleRun` holds what the steps share
(the settings, the models, the frames, where progress goes), so that each step is a short method.
"""

from __future__ import annotations

import functools
import math
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import UnsampleError, cancelled
from ..method.context_windows import ContextWindowDenoiser, WindowEvaluator, context_windows
from ..method.denoisers import Conditioning, Guidance, UNetDenoiser
from ..method.schedules import get_sigmas
from ..method.unsampling import resample, unsample
from ..models import Components, families, load_components
from ..protocol import REFINABLE_SAMPLERS, Done, ErrorCode, Event, FrameWritten, JobSpec, Progress, WarningEvent
from .controlnet import make_hints
from .denoiser import build_denoiser
from .devices import (
    Placement,
    Residency,
    chunk_feed_forward,
    default_vae_batch,
    free_memory,
    is_out_of_memory,
    pick_placement,
    tile_vae,
)
from .frames import inspect_frames, list_frames, pixel_digest, read_alpha, read_frames, write_frame
from .latent_cache import LatentCache, cache_key, styled_key
from .output import OutputFolder, usable_folder
from .progress import ProgressTracker
from .prompts import encode_prompt

OUT_OF_MEMORY = (
    "out of memory. From the cheapest: feed-forward chunking, fewer frames per VAE call, CPU offload, "
    "VAE tiling, no ControlNet, a shorter context length (8), a lower resolution"
)


class WindowPool(Protocol):
    """Workers elsewhere (a Ray cluster) that evaluate the UNet on context windows for this job."""

    def evaluator(self, guidance: Guidance, control: bool, hints: np.ndarray | None) -> WindowEvaluator:
        """Evaluates windows with these prompts, ControlNet on or off, and the clip's hints."""
        ...


ComponentLoader = Callable[..., Components]  # load_components' signature


def restyle(
    spec: JobSpec,
    emit: Callable[[Event], None],
    cancel: threading.Event | None = None,
    *,
    load: ComponentLoader | None = None,
    window_pool: WindowPool | None = None,
) -> Done:
    """Run a whole job; raises :class:`UnsampleError` (with a code) on anything the user can fix.

    ``load`` (default: load_components) may hand out models kept from an earlier job (a cluster
    worker's); with a
    ``window_pool`` the UNet runs there and this process keeps only the VAE on its device.
    """
    run = RestyleRun(spec, emit, cancel, load, window_pool)
    try:
        with torch.inference_mode(), ExitStack() as stack:
            run.check_inputs(stack)  # 1. before anything heavy is loaded
            run.load_models()  # 2. the motion module decides how many frames a window may hold
            run.encode_prompts()  # 3. then the text encoders are freed
            run.place_for_sampling()  # 4. with the memory options
            styled, noise = run.from_cache()  # 5. what earlier runs of the same frames left
            if styled is None:
                styled = run.sample(stack, noise)  # 6. unsample (unless cached), then resample
            return run.write_frames(styled)  # 7. latents to frames, each written whole
    except UnsampleError:
        raise
    except Exception as error:
        if is_out_of_memory(error):
            raise UnsampleError(ErrorCode.OUT_OF_MEMORY, OUT_OF_MEMORY, str(error)) from error
        raise
    finally:
        if run.placement is not None:
            free_memory(run.placement.device)


class RestyleRun:
    """One restyle: its settings, where events go, whether it was asked to stop, and what its steps
    have made so far."""

    def __init__(
        self,
        spec: JobSpec,
        emit: Callable[[Event], None],
        cancel: threading.Event | None = None,
        load: ComponentLoader | None = None,
        window_pool: WindowPool | None = None,
    ) -> None:
        self.spec = spec
        self.emit = emit
        self.cancel = cancel or threading.Event()
        self.load = load
        self.window_pool = window_pool
        self.started = time.monotonic()
        self.placement: Placement | None = None
        self.residency: Residency | None = None
        self.components: Components | None = None
        self.vae_batch = spec.vae_batch
        self.guidance: dict[str, Guidance] = {}  # per pass: "unsample", "resample"
        self.cache: LatentCache | None = None
        self.key = self.finished_key = ""  # the cache keys of the unsampled and the styled latents
        self.unsample_cached = False  # the unsampled latents came from the cache: no unsample pass

    # --- events -------------------------------------------------------------------------------------

    def warn(self, message: str) -> None:
        self.emit(WarningEvent(message))  # the command line also puts every warning on stderr

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise cancelled(self.cancel)

    def downloading(self, repo: str, done: int, total: int) -> None:
        """A model download's progress, file by file; cancelling stops it between files."""
        self.emit(Progress(stage="download", step=done, total=total))
        self.check_cancelled()

    # --- the steps ----------------------------------------------------------------------------------

    def check_inputs(self, stack: ExitStack) -> None:
        spec = self.spec
        problems = spec.validate()
        if problems:
            raise UnsampleError(ErrorCode.BAD_SETTINGS, "; ".join(problems))
        self.frames = list_frames(spec.frames)
        info = inspect_frames(self.frames)
        self.source_size = info.size
        if info.with_alpha:
            self.warn(
                f"{info.with_alpha} of {len(self.frames)} frames have transparency: the model restyles their colour, "
                "and each styled frame keeps its source frame's alpha"
            )
        self.size = _processing_size(spec, self.source_size, self.warn)
        self.output = stack.enter_context(OutputFolder.claim(spec, self.frames, self.warn))
        self.out = self.output.folder
        if spec.work_dir:
            self.work = usable_folder(Path(spec.work_dir).expanduser(), "work folder")
        else:
            self.work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if spec.cache_dir:
            hint = " (choose another cache folder, or keep no cache: --no-cache)"
            usable_folder(Path(spec.cache_dir).expanduser(), "cache folder", hint)
            # Every frame decoded now, before any model loads: a damaged one is named at once.
            self.pixels = pixel_digest(self.frames)
        self.refine = spec.inversion_refinement if spec.sampler in REFINABLE_SAMPLERS else 0
        if spec.inversion_refinement and not self.refine:
            refinable = ", ".join(REFINABLE_SAMPLERS)
            self.warn(f"inversion refinement works with the {refinable} sampler; {spec.sampler} unsamples without it")
        self.tracker = ProgressTracker(self.emit, len(self.frames), {})

    def load_models(self) -> None:
        spec = self.spec
        self.tracker.start("load")
        self.placement = pick_placement(spec.device)
        # load_components looked up now, not bound at import: benchmarks wrap it to time the models.
        self.components = (self.load or load_components)(
            spec, self.placement.dtype, self.placement.vae_dtype, self.warn, self.downloading
        )
        _check_size(self.size, self.components)
        self.windows = _windows(spec, len(self.frames), self.components.context_limit, self.warn)
        calls = spec.steps * len(self.windows)
        self.tracker.units |= {"unsample": calls * (1 + self.refine), "resample": calls}
        self.check_cancelled()

    def encode_prompts(self) -> None:
        spec, components = self.spec, self.components
        self.residency = Residency(self.placement.device, spec.cpu_offload)
        self.residency.place(components.text_encoders)
        with self.residency.phase(*components.text_encoders):
            # The uncond of both passes, as diffusers' SDXL pipelines make it for each prompt.
            negative = self._encode(spec.negative_prompt, negative=True)
            self.guidance["unsample"] = Guidance(self._encode(spec.source_prompt), negative, spec.unsample_cfg)
            self.guidance["resample"] = Guidance(self._encode(spec.prompt), negative, spec.cfg)
        components.text_encoders = []
        free_memory(self.placement.device)

    def _encode(self, text: str, negative: bool = False) -> Conditioning:
        components = self.components
        empty_is_zeros = negative and components.zero_empty_negative
        return encode_prompt(
            components.tokenizers,
            components.text_encoders,
            text,
            self.placement.device,
            self.size,
            self.warn,
            zeros_if_empty=empty_is_zeros,
        )

    def place_for_sampling(self) -> None:
        spec, components = self.spec, self.components
        self.residency.place([components.vae, *self._sampling_models()])
        if spec.vae_tiling:
            tile_vae(components.vae)
        if spec.chunk_feed_forward and not self.window_pool:
            for model in (components.unet, components.controlnet):
                if model is not None:
                    chunk_feed_forward(model)
        self.vae_batch = spec.vae_batch or default_vae_batch(spec.family, components.vae.dtype)

    def from_cache(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """With the same frames and settings: the styled latents (an interrupted job: only missing
        frames are decoded) or, for a new style, the unsampled ones; else nothing."""
        spec = self.spec
        if not spec.cache_dir:
            return None, None
        self.cache = LatentCache(spec.cache_dir, spec.cache_limit_mb * 2**20)
        self.key = cache_key(spec, self.pixels, self.size, self.placement)
        self.finished_key = styled_key(spec, self.key)
        styled = self.cache.get(self.finished_key)
        noise = self.cache.get(self.key) if styled is None else None
        self.unsample_cached = styled is not None or noise is not None
        if self.unsample_cached:
            self.tracker.units["unsample"] = 0
        if styled is not None:
            self.tracker.units["resample"] = self.tracker.units["encode"] = 0
        return styled, noise

    def sample(self, stack: ExitStack, noise: torch.Tensor | None) -> torch.Tensor:
        """The styled latents: frames to latents and ControlNet hints a few frames at a time, then
        unsampled (unless ``noise`` came from the cache) and resampled with the style prompt."""
        spec, components = self.spec, self.components
        # Hints are cheap to remake and large (a frame each): they never outlive the job.
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self.work, ignore_cleanup_errors=True)))
        hints = _open_hints(scratch, spec, len(self.frames), self.size)
        with self.residency.phase(components.vae if noise is None else None):
            latents = self._read_frames(hints, encode=noise is None)
        unet, denoiser = build_denoiser(components, spec, hints)
        sigmas = get_sigmas(
            spec.scheduler,
            spec.steps,
            training_sigmas=denoiser.sigmas,
            ays_sigmas=families.family(spec.family).ays_sigmas,
        )
        with self.residency.phase(*self._sampling_models()):
            if noise is None:
                unet.enabled = components.controlnet is not None and spec.control_in_unsample
                unsample_refined = functools.partial(unsample, refine=self.refine)
                noise = self._sampling_pass("unsample", unsample_refined, denoiser, sigmas, latents)
                if self.cache:
                    self.cache.put(self.key, noise)
            noise = _blend_fresh_noise(noise.to(self.placement.device), spec.noise, spec.seed, float(sigmas[0]))
            unet.enabled = components.controlnet is not None
            styled = self._sampling_pass("resample", resample, denoiser, sigmas, noise)
        if self.cache:
            self.cache.put(self.finished_key, styled)
        return styled

    def write_frames(self, styled: torch.Tensor) -> Done:
        """Decode and write every frame in clip order; frames this very job wrote before it was
        interrupted are kept."""
        styled = styled.to(self.placement.device)
        with self.residency.phase(self.components.vae):
            reused = self._decode_frames(styled)
        return self._done(reused)

    # --- inside the steps ---------------------------------------------------------------------------

    def _sampling_models(self) -> list:
        """The models the sampling passes run here: none when a window pool runs the UNet."""
        return [] if self.window_pool else [self.components.unet, self.components.controlnet]

    def _read_frames(self, hints: np.ndarray | None, encode: bool) -> torch.Tensor | None:
        """Read the frames a batch at a time: ControlNet hints into ``hints``, and (if ``encode``)
        scaled VAE latents, (1, C, F, h, w) float32, returned."""
        vae, frames, size = self.components.vae, self.frames, self.size
        factor = self.components.vae_scale_factor
        latents = None
        if encode:
            shape = (1, vae.config.latent_channels, len(frames), size[1] // factor, size[0] // factor)
            latents = torch.empty(shape, dtype=torch.float32, device=self.placement.device)
        self.tracker.start("encode")
        batch = self.vae_batch
        for start in range(0, len(frames), batch):
            self.check_cancelled()
            pixels = read_frames(frames[start : start + batch], size)
            if hints is not None:
                hints[start : start + len(pixels)] = make_hints(self.spec.control, pixels)
            if latents is not None:
                images = torch.from_numpy(pixels).to(self.placement.device).permute(0, 3, 1, 2)
                images = images.to(vae.dtype) / 127.5 - 1
                # The mean of the latent distribution: deterministic, no sampling noise added.
                encoded = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
                latents[0, :, start : start + len(pixels)] = encoded.permute(1, 0, 2, 3).float()
            self.tracker.advance(min(start + batch, len(frames)), len(frames), units=len(pixels))
        return latents

    def _sampling_pass(
        self,
        stage: str,
        run_pass: Callable[..., torch.Tensor],
        denoiser: UNetDenoiser,
        sigmas: torch.Tensor,
        latents: torch.Tensor,
    ) -> torch.Tensor:
        """One pass over every context window at each step, with that pass's prompts."""
        steps_done = 0
        total = len(sigmas) - 1

        def on_window(index: int, count: int) -> None:
            self.tracker.advance(steps_done + 1, total, index + 1, count)
            self.check_cancelled()

        def on_step(_step: object) -> None:
            nonlocal steps_done
            steps_done += 1

        evaluate = None
        if self.window_pool is not None:
            unet = denoiser.unet  # the ControlledUNet: whether ControlNet is on in this pass, and the hints
            evaluate = self.window_pool.evaluator(self.guidance[stage], unet.enabled, unet.hints)
        model = ContextWindowDenoiser(denoiser, self.windows, self.spec.fusion, on_window, evaluate)
        self.tracker.start(stage)
        extra = {"guidance": self.guidance[stage]}
        return run_pass(model, latents, sigmas, sampler=self.spec.sampler, extra_args=extra, callback=on_step)

    def _decode_frames(self, latents: torch.Tensor) -> int:
        """Decode and write every frame; returns how many were already there from this same job."""
        frames, out = self.frames, self.out
        kept = self.output.frames_kept(self.finished_key)
        vae = self.components.vae
        self.tracker.start("decode")
        batch = self.vae_batch
        for start in range(0, len(frames), batch):
            self.check_cancelled()
            todo = [i for i in range(start, min(start + batch, len(frames))) if frames[i].name not in kept]
            if todo:
                chunk = latents[0, :, todo].permute(1, 0, 2, 3) / vae.config.scaling_factor
                images = vae.decode(chunk.to(vae.dtype), return_dict=False)[0]
                pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                for index, frame_pixels in zip(todo, pixels.permute(0, 2, 3, 1).cpu().numpy(), strict=True):
                    alpha = read_alpha(frames[index])
                    write_frame(out / frames[index].name, frame_pixels, self.source_size, alpha)
            for index in range(start, min(start + batch, len(frames))):
                self.tracker.frames_written += 1
                self.emit(FrameWritten(name=frames[index].name, index=index))
            done = min(start + batch, len(frames))
            self.tracker.advance(done, len(frames), units=min(batch, len(frames) - start))
        return len(kept)

    def _done(self, reused: int) -> Done:
        done = Done(
            frames=len(self.frames),
            out=str(self.out),
            seconds=round(time.monotonic() - self.started, 2),
            unsample_cached=self.unsample_cached,
            frames_reused=reused,
        )
        self.emit(done)
        return done


# --- pure helpers ---------------------------------------------------------------------------------


def _check_size(size: tuple[int, int], components: Components) -> None:
    """Each UNet level halves the latents; the deepest must keep at least one latent pixel."""
    least = components.vae_scale_factor * 2 ** (len(components.unet.config.block_out_channels) - 1)
    if min(size) < least:
        raise UnsampleError(
            ErrorCode.BAD_FRAMES,
            f"frames of {size[0]}x{size[1]} are too small for this model: it needs at least {least} pixels a side",
        )


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


def _open_hints(work: Path, spec: JobSpec, frames: int, size: tuple[int, int]) -> np.ndarray | None:
    if spec.control == "none":
        return None
    # On disk, memory-mapped: the hints of a long clip never sit in memory at once.
    shape = (frames, size[1], size[0], 3)
    return np.lib.format.open_memmap(work / "hints.npy", mode="w+", dtype=np.uint8, shape=shape)


def _blend_fresh_noise(noise: torch.Tensor, share: float, seed: int, sigma_max: float) -> torch.Tensor:
    """Mix in seeded Gaussian noise at the same scale: more freedom for the style, less fidelity."""
    if share <= 0:
        return noise
    generator = torch.Generator(device="cpu").manual_seed(seed)
    fresh = torch.randn(noise.shape, generator=generator, dtype=torch.float32).to(noise.device)
    return noise * math.sqrt(1 - share**2) + fresh * (sigma_max * share)
