"""The GPU check: memory, speed, fp16 sanity and cancelling, on full-size random-weight models.

On one CUDA GPU, in a few minutes, with models built here from the real configs' dimensions
(figure 7's: SD 1.5 UNet + AnimateDiff v1-5-2 motion module + ControlNet from the UNet, SD VAE,
CLIP ViT-L; SDXL UNet + AnimateDiff SDXL motion module + ControlNet, SDXL VAE, CLIP ViT-L and
OpenCLIP bigG), random weights, nothing downloaded, it measures:

* peak VRAM (``torch.cuda.max_memory_allocated``, reset before each job) of the real ``restyle``
  on a short clip (2 steps): SD 1.5 at 512 px and 16 frames with the default settings, with each
  memory option alone (``chunk_feed_forward``, ``vae_batch=1``, ``cpu_offload``, ``vae_tiling``) and
  with all four; SDXL at 1024 px with 8 and with 16 frames;
* ms per UNet call, our resample pass against diffusers' ``AnimateDiffVideoToVideoPipeline`` on
  the same SD 1.5 modules (figure 2's two sides, each UNet call followed by a CUDA sync);
* that every UNet output, the styled latents and every VAE decode of those jobs are finite;
* a cancel set from the progress callback after the first resample step: the job must stop with
  the cancelled error, at once, with no further UNet call and no frame written.

It writes ``gpu_results.json`` and ``gpu_check.md`` (which GPU ran it, the numbers) to ``--out``
(default: this folder). With ``--dry-run`` the same code runs on the CPU on the tiny models of
``engine/tiny_models.py`` (64 px, 4-8 frames, fp32; VRAM reads "n/a (CPU)"), by default into a
temporary folder; a dry run never writes over the results of a real run.

The command for a session lent a GPU (the device tool's ``run``, in the repository root; the
machine has torch but no diffusers: carry its wheel and importlib_metadata's as ``.whl``, made
here with ``pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata`` after ``echo /.whl/ >>
.git/info/exclude``; carry ``[".whl"]``, timeout_s 600):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 python3 tests/benchmarks/gpu_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"

Elsewhere: ``python3 build.py bench --gpu [--dry-run]`` runs it in the project's environment.
"""  # noqa: E501  (the command is one line to copy)

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_leaves

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fig2_diffusers as fig2  # noqa: E402
import fig7_vram as fig7  # noqa: E402
from jobs import ROOT, job_spec, write_clip  # noqa: E402  (puts the repository on the path)

from blender_unsample.engine import tiny_models  # noqa: E402
from blender_unsample.engine.errors import UnsampleError  # noqa: E402
from blender_unsample.engine.job import pipeline  # noqa: E402
from blender_unsample.engine.job.controlnet import ControlledUNet  # noqa: E402
from blender_unsample.engine.job.prompts import encode_prompt  # noqa: E402
from blender_unsample.engine.method.context_windows import context_windows  # noqa: E402
from blender_unsample.engine.method.denoisers import Guidance, UNetDenoiser  # noqa: E402
from blender_unsample.engine.method.schedules import get_sigmas  # noqa: E402
from blender_unsample.engine.method.unsampling import unsample  # noqa: E402
from blender_unsample.engine.models.families.sd15 import SD15  # noqa: E402
from blender_unsample.engine.protocol import ErrorCode, Event, Progress  # noqa: E402
from blender_unsample.engine.tiny_models import TinyModels  # noqa: E402

GIB = 2**30
STEPS = 2  # per pass, in the memory and cancel jobs
CPU = "n/a (CPU)"
RESULTS, REPORT = "gpu_results.json", "gpu_check.md"
OPTIONS = ("chunk_feed_forward", "vae_batch", "cpu_offload", "vae_tiling")
CLIP_VOCAB = 49408  # the real CLIP tokenizer's; the byte-level test tokenizer uses its first 514 ids


@dataclass(frozen=True)
class Sizes:
    """What a run measures at: the real sizes on a GPU, tiny ones on the CPU."""

    device: str
    sd15: tuple[int, int]  # px, frames
    sdxl: tuple[tuple[int, int], ...]
    speed: tuple[int, int]
    speed_steps: int
    pairs: int


GPU_SIZES = Sizes("cuda", (512, 16), ((1024, 8), (1024, 16)), (512, 16), 4, 3)
DRY_SIZES = Sizes("cpu", (64, 4), ((64, 4), (64, 8)), (64, 4), 2, 1)


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    size: int
    frames: int
    options: dict[str, Any] = field(default_factory=dict)


def cases(sizes: Sizes) -> list[Case]:
    size, frames = sizes.sd15
    one = {"chunk_feed_forward": True, "vae_batch": 1, "cpu_offload": True, "vae_tiling": True}
    sd15 = [Case("SD1.5 defaults", "sd15", size, frames)]
    for name, value in one.items():
        sd15.append(Case(f"SD1.5 {name}" + ("" if value is True else f" {value}"), "sd15", size, frames, {name: value}))
    sd15.append(Case("SD1.5 all four options", "sd15", size, frames, dict(one)))
    sdxl = [Case(f"SDXL {f} frames", "sdxl", s, f) for s, f in sizes.sdxl]
    return sd15 + sdxl


# --- the models ---------------------------------------------------------------------------------------


def full_size_models(root: Path, family: str, device: str) -> TinyModels:
    """Random-weight models with the real configs' dimensions (figure 7's), fp16, in the layout of
    the Hugging Face repos they stand in for. Built on ``device`` (a GPU draws the random weights
    in a moment), saved, and freed: jobs load them as they would load the real ones."""
    from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = root / f"{family}-full"
    models = TinyModels(family, folder / "checkpoint", folder / "motion_adapter", folder / "controlnet")
    if (folder / "complete").exists():
        return models
    xl, half = family == "sdxl", torch.float16
    checkpoint = models.checkpoint
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(fig7.SDXL_UNET if xl else fig7.SD15_UNET))
        ControlNetModel.from_unet(unet).to(half).save_pretrained(models.controlnet)
        unet.to(half).save_pretrained(checkpoint / "unet")
        del unet
        MotionAdapter(**(fig7.ANIMATEDIFF_SDXL if xl else fig7.ANIMATEDIFF_V2)).to(half).save_pretrained(
            models.motion_adapter
        )
        # force_upcast stays AutoencoderKL's default (True), as in both real VAEs' configs.
        vae = AutoencoderKL(**fig7.VAE, **(fig7.SDXL_VAE if xl else {}), sample_size=1024 if xl else 512)
        vae.to(half).save_pretrained(checkpoint / "vae")
        del vae
        # The test tokenizer's ids: bos 0, eos (and pad) 1.
        ids = {"vocab_size": CLIP_VOCAB, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1}
        ids["pad_token_id"] = 1
        tiny_models._write_byte_level_tokenizer(checkpoint / "tokenizer", pad="<|endoftext|>")
        CLIPTextModel(CLIPTextConfig(**fig7.CLIP_L, **ids)).to(half).save_pretrained(checkpoint / "text_encoder")
        if xl:
            tiny_models._write_byte_level_tokenizer(checkpoint / "tokenizer_2", pad="!")
            encoder = CLIPTextModelWithProjection(CLIPTextConfig(**fig7.CLIP_BIGG, **ids))
            encoder.to(half).save_pretrained(checkpoint / "text_encoder_2")
            del encoder
    tiny_models._scheduler().save_pretrained(checkpoint / "scheduler")
    tiny_models._write_model_index(checkpoint, xl)
    (folder / "complete").write_text("full-size random-weight models; their output is noise\n")
    _free(device)
    return models


def models_for(root: Path, family: str, dry_run: bool, device: str) -> TinyModels:
    if dry_run:
        return tiny_models.build_tiny_models(root, family)
    return full_size_models(root, family, device)


# --- watching a job -----------------------------------------------------------------------------------


@dataclass
class Watch:
    """What one job's models produced: UNet calls, and whether every checked tensor was finite."""

    unet_calls: int = 0
    checked: dict[str, int] = field(default_factory=dict)
    not_finite: list[str] = field(default_factory=list)
    unet_calls_at_cancel: int | None = None

    def check(self, what: str, output: Any) -> None:
        tensors = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        self.checked[what] = self.checked.get(what, 0) + 1
        if not all(bool(torch.isfinite(t).all()) for t in tensors) and what not in self.not_finite:
            self.not_finite.append(what)

    def on_unet(self, module: Any, args: Any, output: Any) -> None:
        self.unet_calls += 1
        self.check("unet output", output)


@contextmanager
def watching() -> Iterator[Watch]:
    """Hooks on the models of the jobs run in this block (the loader is wrapped, as ``jobs.py``
    times them), and a look at the styled latents before they are decoded."""
    watch = Watch()
    load, write = pipeline.load_components, pipeline.RestyleRun.write_frames

    def load_and_hook(*args: Any, **kwargs: Any) -> Any:
        components = load(*args, **kwargs)
        components.unet.register_forward_hook(watch.on_unet)
        components.vae.decoder.register_forward_hook(lambda m, a, out: watch.check("vae decode", out))
        return components

    def check_and_write(run: Any, styled: torch.Tensor) -> Any:
        watch.check("styled latents", styled)
        return write(run, styled)

    pipeline.load_components = load_and_hook
    pipeline.RestyleRun.write_frames = check_and_write  # type: ignore[method-assign]
    try:
        yield watch
    finally:
        pipeline.load_components = load
        pipeline.RestyleRun.write_frames = write  # type: ignore[method-assign]


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _clip(scratch: Path, size: int, frames: int) -> Path:
    folder = scratch / f"clip-{size}-{frames}"
    if not folder.exists():
        write_clip(folder, frames, size=(size, size))
    return folder


# --- the measurements ---------------------------------------------------------------------------------


def run_job(case: Case, models: TinyModels, scratch: Path, device: str) -> dict[str, Any]:
    """One real ``restyle`` job, its peak VRAM and whether its outputs are finite."""
    clip = _clip(scratch, case.size, case.frames)
    out = scratch / "out" / case.name.replace(" ", "-")
    spec = job_spec(models, clip, out, family=case.family, steps=STEPS, device=device, **case.options)
    _free(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    with watching() as watch:
        done = pipeline.restyle(spec, lambda event: None)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    row: dict[str, Any] = {
        "case": case.name,
        "family": case.family,
        "size": case.size,
        "frames": case.frames,
        "options": case.options,
        "seconds": round(seconds, 2),
        "frames_written": len(list(out.glob("*.png"))),
        "unet_calls": watch.unet_calls,
        "checked": watch.checked,
        "finite": not watch.not_finite and watch.checked.get("styled latents") == 1,
        "not_finite": watch.not_finite,
        "reported_frames": done.frames,
    }
    if device == "cuda":
        row["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
        row["allocated_before_gib"] = round(before / GIB, 3)
    else:
        row["peak_vram_gib"] = row["peak_reserved_gib"] = CPU
    _free(device)
    return row


def cancel_job(models: TinyModels, scratch: Path, size: int, frames: int, device: str) -> dict[str, Any]:
    """A job cancelled from its progress callback once the first resample step is done."""
    clip = _clip(scratch, size, frames)
    out = scratch / "out" / "cancelled"
    spec = job_spec(models, clip, out, steps=STEPS, device=device)
    cancel = threading.Event()
    marks: dict[str, float] = {}
    watch_box: list[Watch] = []

    def on_event(event: Event) -> None:
        if not isinstance(event, Progress) or event.stage != "resample" or cancel.is_set():
            return
        if event.step == 1 and event.window == event.windows:  # after each window: the first step is done
            marks["set"] = time.perf_counter()
            watch_box[0].unet_calls_at_cancel = watch_box[0].unet_calls
            cancel.set()

    error: UnsampleError | None = None
    _free(device)
    with watching() as watch:
        watch_box.append(watch)
        try:
            pipeline.restyle(spec, on_event, cancel)
        except UnsampleError as caught:
            error = caught
    stopped = time.perf_counter()
    _free(device)
    calls_after = None if watch.unet_calls_at_cancel is None else watch.unet_calls - watch.unet_calls_at_cancel
    return {
        "case": f"cancel after resample step 1 of {STEPS}",
        "cancel_set": "set" in marks,
        "error": None if error is None else error.code.value,
        "stopped": error is not None and error.code == ErrorCode.CANCELLED,
        "seconds_to_stop": round(stopped - marks["set"], 4) if "set" in marks else None,
        "unet_calls_before_cancel": watch.unet_calls_at_cancel,
        "unet_calls_after_cancel": calls_after,
        "frames_written": len(list(out.glob("*.png"))) if out.exists() else 0,
        "finite": not watch.not_finite,
    }


class Ours(fig2.Ours):
    """Figure 2's side of ours, on any device and for a given clip and step count."""

    def __init__(self, shared: fig2.Shared, frames: list[Any], size: int, steps: int, device: torch.device) -> None:
        with torch.inference_mode():
            self.denoiser = UNetDenoiser.from_scheduler(ControlledUNet(shared.unet, None), shared.scheduler)
            self.sigmas = get_sigmas("ays", steps, training_sigmas=self.denoiser.sigmas, ays_sigmas=SD15.ays_sigmas)
            self.windows = context_windows(len(frames), len(frames), 0)  # one window, as diffusers has

            def encode(text: str) -> Any:
                return encode_prompt([shared.tokenizer], [shared.text_encoder], text, device, (size, size))

            negative = encode(fig2.NEGATIVE)
            self.guidance = Guidance(encode(fig2.PROMPT), negative, fig2.CFG)
            vae = shared.vae
            pixels = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2)
            pixels = pixels.to(device, vae.dtype) / 127.5 - 1
            latents = vae.encode(pixels).latent_dist.mean.float() * vae.config.scaling_factor
            latents = latents.permute(1, 0, 2, 3).unsqueeze(0)  # (1, C, F, h, w)
            guidance = Guidance(self.guidance.cond, negative, fig2.UNSAMPLE_CFG)
            self.noise = unsample(self._model(), latents, self.sigmas, extra_args={"guidance": guidance})


def _shared(models: TinyModels, dtype: torch.dtype, device: str) -> fig2.Shared:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    checkpoint = models.checkpoint
    adapter = MotionAdapter.from_pretrained(models.motion_adapter, torch_dtype=dtype)
    unet2d = UNet2DConditionModel.from_pretrained(checkpoint / "unet", torch_dtype=dtype)
    shared = fig2.Shared(
        tokenizer=CLIPTokenizer.from_pretrained(checkpoint / "tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(checkpoint / "text_encoder", torch_dtype=dtype),
        unet=UNetMotionModel.from_unet2d(unet2d, adapter).to(dtype),
        adapter=adapter,
        vae=AutoencoderKL.from_pretrained(checkpoint / "vae", torch_dtype=dtype),
        scheduler=EulerDiscreteScheduler.from_pretrained(checkpoint / "scheduler"),
    )
    for model in (shared.text_encoder, shared.unet, shared.adapter, shared.vae):
        model.to(device).eval().requires_grad_(False)
    return shared


def compare_speed(models: TinyModels, scratch: Path, sizes: Sizes, dtype: torch.dtype) -> dict[str, Any]:
    """ms per UNet call, our resample pass against diffusers' video-to-video pipeline, figure 2's way."""
    from PIL import Image

    size, frames = sizes.speed
    device = sizes.device
    shared = _shared(models, dtype, device)
    if device == "cuda":  # before the clock's hooks: each UNet call is timed to its end on the GPU
        for register in (shared.unet.register_forward_pre_hook, shared.unet.register_forward_hook):
            register(lambda *args: torch.cuda.synchronize())
    clock = fig2.UNetClock(shared.unet)
    images = [Image.open(p).convert("RGB") for p in sorted(_clip(scratch, size, frames).glob("*.png"))]
    ours = Ours(shared, images, size, sizes.speed_steps, torch.device(device))
    theirs = fig2.Theirs(shared, images, size, ours.sigmas)
    try:
        mine = ours.run(clock)  # the warm-up pair, untimed, from the same noise
        peer = theirs.run(clock, latents=ours.noise.clone())
        runs: dict[str, list[fig2.Run]] = {"ours": [], "theirs": []}
        sides: dict[str, Callable[[fig2.UNetClock], fig2.Run]] = {"ours": ours.run, "theirs": theirs.run}
        for pair in range(sizes.pairs):
            for side in ("ours", "theirs") if pair % 2 == 0 else ("theirs", "ours"):
                runs[side].append(sides[side](clock))
    finally:
        clock.remove()
    mine_out, peer_out = mine.latents.float(), peer.latents.float()
    scale = float(mine_out.abs().max())
    result = {
        "size": size,
        "frames": frames,
        "steps": sizes.speed_steps,
        "pairs": sizes.pairs,
        "dtype": str(dtype).removeprefix("torch."),
        "agreement": float((mine_out - peer_out).abs().max()) / scale if scale > 0 else math.inf,
        "finite": bool(torch.isfinite(mine_out).all() and torch.isfinite(peer_out).all()),
    }
    for side, side_runs in runs.items():
        result[side] = {
            "calls": sorted({r.calls for r in side_runs}),
            "ms_per_call": round(float(np.median([r.ms_per_call for r in side_runs])), 3),
            "inside_ms_per_call": round(float(np.median([1000 * r.inside / r.calls for r in side_runs])), 3),
        }
    result["ratio"] = round(result["ours"]["ms_per_call"] / result["theirs"]["ms_per_call"], 4)
    del shared, ours, theirs
    _free(device)
    return result


# --- the run and its report ---------------------------------------------------------------------------


def machine(device: str) -> dict[str, Any]:
    import diffusers
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / GIB, 1), "cuda": torch.version.cuda}
    else:
        info["gpu"] = "none: a dry run on the CPU"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        info["commit"] = commit.stdout.strip() or "unknown"
    except OSError:
        info["commit"] = "unknown"
    return info


def measure(dry_run: bool, scratch: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    sizes = DRY_SIZES if dry_run else GPU_SIZES
    device = sizes.device
    dtype = torch.float32 if dry_run else torch.float16
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(what: str, since: float) -> None:
        timings[what] = round(time.perf_counter() - since, 1)
        log(f"gpu check: {what} ({timings[what]} s, {time.perf_counter() - started:.0f} s in all)")

    results: dict[str, Any] = {"dry_run": dry_run, "device": device, "machine": machine(device), "steps": STEPS}
    jobs = []
    for family in ("sd15", "sdxl"):
        mark = time.perf_counter()
        models = models_for(scratch / "models", family, dry_run, device)
        lap(f"{family} models built", mark)
        for case in (c for c in cases(sizes) if c.family == family):
            mark = time.perf_counter()
            jobs.append(run_job(case, models, scratch, device))
            lap(case.name, mark)
        if family == "sd15":
            mark = time.perf_counter()
            results["cancel"] = cancel_job(models, scratch, *sizes.sd15, device)
            lap("cancel", mark)
            mark = time.perf_counter()
            results["speed"] = compare_speed(models, scratch, sizes, dtype)
            lap("ours vs diffusers", mark)
    results["jobs"] = jobs
    results["timings"] = timings
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def markdown(results: dict[str, Any]) -> str:
    info, speed, cancel = results["machine"], results["speed"], results["cancel"]
    if results["dry_run"]:
        title = "## GPU check: DRY RUN on the CPU (tiny models; no GPU ran this)"
        ran = f"No GPU ran this: a dry run on the CPU ({info['cpu']}), tiny random-weight models, fp32."
    else:
        title = f"## GPU check on {info['gpu']}"
        ran = (
            f"Ran on **{info['gpu']}** ({info['gpu_memory_gib']} GiB, CUDA {info['cuda']}), fp16, full-size "
            "random-weight models (figure 7's configs: SD 1.5 / SDXL UNet, AnimateDiff motion module, ControlNet "
            "from the UNet, VAE, CLIP text encoders)."
        )
    lines = [
        title,
        "",
        f"{ran} torch {info['torch']}, diffusers {info['diffusers']}, transformers {info['transformers']}, "
        f"commit {info['commit']}; {results['seconds']} s in all. Each job: the real `restyle`, {results['steps']} "
        "steps per pass, the default settings (ControlNet canny, inversion refinement 1) but for the options named.",
        "",
        "| job | px | frames | peak VRAM (GiB, allocated) | reserved (GiB) | seconds | UNet calls | all finite |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for job in results["jobs"]:
        finite = "yes" if job["finite"] else f"NO: {', '.join(job['not_finite']) or 'latents unchecked'}"
        lines.append(
            f"| {job['case']} | {job['size']} | {job['frames']} | {job['peak_vram_gib']} | {job['peak_reserved_gib']} "
            f"| {job['seconds']} | {job['unet_calls']} | {finite} |"
        )
    lines += [
        "",
        f"Ours against diffusers' AnimateDiffVideoToVideoPipeline (same SD 1.5 modules, {speed['size']} px, "
        f"{speed['frames']} frames, {speed['steps']} Euler steps, CFG {fig2.CFG}, {speed['dtype']}, median of "
        f"{speed['pairs']} pair(s) after a warm-up pair): **ours {speed['ours']['ms_per_call']} ms per UNet call, "
        f"theirs {speed['theirs']['ms_per_call']} ms**, ratio {speed['ratio']}; inside the UNet "
        f"{speed['ours']['inside_ms_per_call']} / {speed['theirs']['inside_ms_per_call']} ms. From the same noise "
        f"the two outputs differ by {speed['agreement']:.1e} of their largest value.",
        "",
        f"Cancel: set from the progress callback once resample step 1 of {results['steps']} was done; "
        f"{'stopped with the cancelled error' if cancel['stopped'] else 'DID NOT STOP: ' + str(cancel['error'])} "
        f"{cancel['seconds_to_stop']} s later, {cancel['unet_calls_after_cancel']} UNet calls after the cancel, "
        f"{cancel['frames_written']} frames written.",
        "",
    ]
    return "\n".join(lines)


def check_writable(out: Path, dry_run: bool) -> None:
    """A dry run must never replace a real run's results."""
    existing = out / RESULTS
    if dry_run and existing.exists():
        try:
            real = json.loads(existing.read_text(encoding="utf-8")).get("dry_run") is False
        except (OSError, ValueError, AttributeError):
            real = False
        if real:
            raise SystemExit(f"gpu check: {existing} holds a real GPU run's results; a dry run will not replace them")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: tests the code, no GPU")
    parser.add_argument("--out", type=Path, help="folder for gpu_results.json and gpu_check.md")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu check: torch sees no CUDA GPU; use --dry-run to test the code on the CPU", file=sys.stderr)
        return 2
    out = args.out or (Path(tempfile.gettempdir()) / "unsample-gpu-check-dry-run" if args.dry_run else HERE)
    out.mkdir(parents=True, exist_ok=True)
    check_writable(out, args.dry_run)
    if args.dry_run:
        torch.set_num_threads(1)  # tiny models: on shared cores a second thread waits more than it helps
    with tempfile.TemporaryDirectory(prefix="unsample-gpu-check-") as scratch:
        results = measure(args.dry_run, Path(scratch))
    check_writable(out, args.dry_run)
    (out / RESULTS).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    report = markdown(results)
    (out / REPORT).write_text(report, encoding="utf-8")
    print(report)
    print(f"gpu check: wrote {out / RESULTS} and {out / REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
