"""Figure 11: a Ray cluster. What does sharing a strip's windows among workers cost, and what could
N GPUs gain?

Measured here: the exchange of one model evaluation over a clip (the driver slices the windows,
sends them to two workers that hand them straight back, and collects them) with the engine's own
RemoteWindows on a local Ray, at the latent sizes of SD 1.5 at 512 px and SDXL at 1024 px; the
driver's fusion of the windows; and the command line with ``--cluster auto`` and 1 or 2 CPU
workers on the tiny models against the one-process run (wall time, identical frames).

On paper: the UNet's and VAE's work, counted in FLOPs on the meta device with figure 7's models
(torch's FlopCounterMode over the same guided call figure 7 measures), turned into seconds at an
assumed GPU throughput; with the exchange measured here, Amdahl's law gives the speed-up of a job
on N GPUs. No GPU ran any of it.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jobs import ROOT, build_tiny_models, job_spec, write_clip
from report import REPEATS, Figure, spread, summary

from blender_unsample.engine.method.context_windows import ContextWindowDenoiser, context_windows
from blender_unsample.engine.method.denoisers import Conditioning, Guidance

# Achieved fp16 throughput assumed for the projection (TFLOP/s): a 12 GB-class card and a fast one.
THROUGHPUTS = {"12 GB-class GPU, 30 TFLOP/s achieved": 30.0, "fast GPU, 150 TFLOP/s achieved": 150.0}
NETWORK_GBIT = 10  # between machines: 10 Gb Ethernet
CLIP_FRAMES = 160  # about 7 seconds at 24 fps
STEPS, CONTEXT, OVERLAP = 16, 16, 4  # the job defaults; unsampling refines each step once
EVALUATIONS = STEPS * 3  # unsample (2 model evaluations a step with refinement) + resample (1)
LATENTS = {"SD1.5 512 px": 64, "SDXL 1024 px": 128}  # latent side
WORKERS = (1, 2, 4, 8)
HEADERS = [
    "model", "GPU (throughput assumed)", "exchange ms, 64 frames (measured)", "fusion ms, 64 frames (measured)",
    "one window's UNet + ControlNet s (computed: FLOPs ÷ assumed throughput)",
    *(f"speed-up on {n} GPUs (computed)" for n in WORKERS[1:]),
]  # fmt: skip


class EchoWorker:
    """Stands in for WindowWorker: takes the same call and returns the windows as they came."""

    def denoise(self, shared: list[Any], windows: list[np.ndarray], sigma: float, frames: list) -> tuple:
        return windows, 0.0, "echo"


def measure(quick: bool, scratch: Path) -> Figure:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        exchange = {name: exchange_cost(ray, side, repeats=REPEATS if quick else 10) for name, side in LATENTS.items()}
    finally:
        ray.shutdown()
    fusion_runs = {name: fusion_cost(side, repeats=REPEATS if quick else 10) for name, side in LATENTS.items()}
    fusion = {name: statistics.median(times) for name, times in fusion_runs.items()}
    work = model_work()
    runs = command_line_runs(scratch, frames=16 if quick else 40, rounds=REPEATS if quick else 5)

    rows = []
    for name in LATENTS:
        for gpu, tflops in THROUGHPUTS.items():
            speedups = computed_speedups(work[name], exchange[name], fusion[name], tflops)
            measured = [spread(exchange[name]["runs_ms"], ".1f"), spread(fusion_runs[name], ".1f")]
            window = f"{work[name]['window_tflop'] / tflops:.2f}"
            rows.append([name, gpu, *measured, window, *(f"{s:.2f}x" for s in speedups["one machine"][1:])])
            rows.append([name, f"{gpu}, machines on {NETWORK_GBIT} GbE", *measured, window,
                         *(f"{s:.2f}x" for s in speedups["network"][1:])])  # fmt: skip
    sd15 = exchange["SD1.5 512 px"]
    windows = len(context_windows(CLIP_FRAMES, CONTEXT, OVERLAP))
    notes = [
        f"Exchange, measured: one model evaluation over a {exchange['SD1.5 512 px']['frames']}-frame clip in windows "
        f"of {CONTEXT} overlapping by {OVERLAP} ({sd15['windows']} windows) sent to 2 local workers and back: "
        + "; ".join(
            f"{name} {spread(e['runs_ms'], '.1f')} ms for {e['bytes'] / 2**20:.1f} MiB "
            f"({e['ms_per_frame']:.2f} ms a frame at the median)"
            for name, e in exchange.items()
        )
        + ". The driver's fusion of those windows: "
        + "; ".join(f"{name} {spread(times, '.1f')} ms" for name, times in fusion_runs.items())
        + f". Median (min–max) of {len(fusion_runs[next(iter(LATENTS))])} runs each.",
        "Model work, counted on the meta device (FLOPs of figure 7's fp16 models): "
        + "; ".join(
            f"{name}: UNet + ControlNet {w['window_tflop']:.1f} TFLOP a window of {CONTEXT} frames (CFG batch of 2), "
            f"VAE {w['vae_tflop_per_frame']:.2f} TFLOP a frame (encode + decode)"
            for name, w in work.items()
        )
        + ".",
        f"Speed-up, computed (Amdahl): a {CLIP_FRAMES}-frame clip, {STEPS} steps ({EVALUATIONS} evaluations of "
        f"every window with refinement), {len(context_windows(CLIP_FRAMES, CONTEXT, OVERLAP))} windows. Parallel: "
        "the windows, ceil(windows / N) per worker per evaluation. Serial, on the driver: the VAE over every "
        "frame, the fusion, and the exchange (measured here on one machine; across machines the bytes over the "
        "network added). Model loading is left out (every worker loads its models at the same time as the "
        "driver). The exchange and fusion measured for 64 frames are scaled to the clip's frames, at their "
        "medians.",
        "Against the UNet: "
        + "; ".join(
            f"{name}, the exchange of a window's {CONTEXT} frames ({exchange[name]['ms_per_frame'] * CONTEXT:.0f} ms) "
            f"is {exchange[name]['ms_per_frame'] * CONTEXT / (work[name]['window_tflop'] / 30.0 * 1000):.1%} of its "
            f"UNet time at 30 TFLOP/s ({work[name]['window_tflop'] / 30.0:.1f} s)"
            for name in LATENTS
        )
        + f". What bounds the speed-up is how the windows divide: {windows} windows on 8 GPUs take 2 rounds "
        f"(at most {windows / 2:.1f}x), and the VAE, which runs on the driver's GPU alone.",
        "The GPU times are FLOPs over an assumed throughput, not measurements: a faster GPU makes the windows "
        "cheaper against the serial work, so its speed-up is lower. On one multi-GPU machine the latents also cross "
        "PCIe to and from each GPU (1 MiB a 16-frame SD 1.5 window: ~0.1 ms at 10 GB/s), left out.",
        f"Command line on this machine's 2 cores, tiny models, {len(runs[0]['seconds'])} rounds, median "
        "(min–max): "
        + "; ".join(
            f"{r['how']} {spread(r['seconds'], '.1f')} s"
            + ("" if "same" not in r else " (same frames)" if all(r["same"]) else " (FRAMES DIFFER)")
            for r in runs
        )
        + ". Two CPU workers share the same 2 cores and the driver, so they cannot be faster here; this run "
        "shows the cluster path end to end and that its frames equal the one-process run's.",
    ]
    speedups_sd15 = computed_speedups(work["SD1.5 512 px"], sd15, fusion["SD1.5 512 px"], 30.0)["one machine"]
    return Figure(
        number=11,
        title="A Ray cluster: exchange cost and speed-up",
        question=(
            "When one long strip's context windows are shared among N GPUs at every step, what does moving the "
            "latents cost, and how much faster is the job? No GPU ran this. Measured here, on the CPU: the exchange "
            "of one model evaluation's windows through a local Ray and the driver's fusion of them. Computed: a "
            "window's UNet + ControlNet time (its FLOPs, counted on the meta device, over the GPU throughput "
            "assumed in the second column) and from it, with the measured exchange and fusion, the job's speed-up "
            "on N GPUs over one (Amdahl, see the notes)."
        ),
        headers=HEADERS,
        rows=rows,
        verdict=(
            f"computed, no GPU ran it: SD 1.5 512 px on {WORKERS[-1]} GPUs of an assumed 30 TFLOP/s "
            f"{speedups_sd15[-1]:.1f}x; the exchange, measured here, is {spread(sd15['runs_ms'], '.0f')} ms an "
            f"evaluation (64 frames) against {work['SD1.5 512 px']['window_tflop'] / 30 * 1000:.0f} ms computed for "
            "one window's UNet"
        ),
        notes=notes,
        raw={
            "exchange": exchange,
            "fusion_ms": fusion,
            "fusion_ms_runs": {name: summary(times) for name, times in fusion_runs.items()},
            "work": work,
            "command_line": runs,
        },
    )


def exchange_cost(ray: Any, side: int, repeats: int) -> dict[str, float]:
    """Median wall time of one evaluation's exchange through RemoteWindows with two echo workers."""
    from blender_unsample.engine.cluster.windows import RemoteWindows

    frames = 64
    windows = context_windows(frames, CONTEXT, OVERLAP)
    workers = [ray.remote(EchoWorker).remote() for _ in range(2)]
    pool = RemoteWindows(ray, workers)
    guidance = Guidance(Conditioning(torch.zeros(1, 77, 768)))
    evaluate = pool.evaluator(guidance, False, None)
    x = torch.randn(1, 4, frames, side, side)
    list(evaluate(x, 1.0, windows, {}))  # the workers start
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        list(evaluate(x, 1.0, windows, {}))
        times.append(time.perf_counter() - started)
    stats = pool.stats[-1]
    ms = statistics.median(times) * 1000
    for worker in workers:
        ray.kill(worker)
    return {
        "ms": ms,
        "runs_ms": [t * 1000 for t in times],
        "ms_per_frame": ms / frames,
        "bytes": stats.bytes_sent + stats.bytes_received,
        "frames": frames,
        "windows": len(windows),
    }


def fusion_cost(side: int, repeats: int) -> list[float]:
    """Milliseconds the driver spends fusing one evaluation's windows (64 frames), outputs given, each run."""
    frames = 64
    windows = context_windows(frames, CONTEXT, OVERLAP)
    x = torch.randn(1, 4, frames, side, side)
    outputs = [x[:, :, w] for w in windows]
    model = ContextWindowDenoiser(None, windows, "pyramid", evaluate=lambda *args: iter(outputs))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(x, 1.0)
        times.append(time.perf_counter() - started)
    return [t * 1000 for t in times]


def model_work() -> dict[str, dict[str, float]]:
    """FLOPs of one guided window call (UNet + ControlNet) and of the VAE for one frame."""
    import fig7_vram as fig7
    from torch.utils.flop_counter import FlopCounterMode

    work = {}
    for name, setup in zip(LATENTS, (fig7.SETUPS[0], fig7.SETUPS[2]), strict=True):
        models = fig7.build(setup)
        with FlopCounterMode(display=False) as window:
            fig7.guided_call(models, setup, CONTEXT, setup.size, True, "meta")
        with FlopCounterMode(display=False) as vae:
            image = torch.randn(1, 3, setup.size, setup.size, device="meta", dtype=models.vae.dtype)
            models.vae.decode(models.vae.encode(image).latent_dist.mean)
        work[name] = {
            "window_tflop": window.get_total_flops() / 1e12,
            "vae_tflop_per_frame": vae.get_total_flops() / 1e12,
        }
    return work


def computed_speedups(
    work: dict[str, float], exchange: dict[str, float], fusion_ms: float, tflops: float
) -> dict[str, list[float]]:
    """Job time on one GPU over job time on N, for each N in WORKERS, on one machine and across machines."""
    windows = len(context_windows(CLIP_FRAMES, CONTEXT, OVERLAP))
    window_s = work["window_tflop"] / tflops
    vae_s = work["vae_tflop_per_frame"] * CLIP_FRAMES / tflops
    scale = CLIP_FRAMES / exchange["frames"]  # the measured exchange and fusion were for a shorter clip
    exchange_s = exchange["ms"] / 1000 * scale
    fusion_s = fusion_ms / 1000 * scale
    network_s = exchange["bytes"] * scale * 8 / (NETWORK_GBIT * 1e9)
    alone = vae_s + EVALUATIONS * (windows * window_s + fusion_s)
    result: dict[str, list[float]] = {"one machine": [], "network": []}
    for n in WORKERS:
        per_evaluation = math.ceil(windows / n) * window_s + fusion_s + (exchange_s if n > 1 else 0)
        result["one machine"].append(alone / (vae_s + EVALUATIONS * per_evaluation))
        across = per_evaluation + (network_s if n > 1 else 0)
        result["network"].append(alone / (vae_s + EVALUATIONS * across))
    return result


def command_line_runs(scratch: Path, frames: int, rounds: int) -> list[dict[str, Any]]:
    """The worker's command line on the tiny models: alone, then on a local Ray with 1 and 2 CPU workers,
    ``rounds`` times each, each round starting with another of the three; every run's frames are compared
    with the first one-process run's."""
    models = build_tiny_models(scratch / "models")
    clip = scratch / "clip"
    write_clip(clip, frames)
    ways = [("one process", []), ("cluster, 1 worker", ["--cluster", "auto", "--cluster-workers", "1"]),
            ("cluster, 2 workers", ["--cluster", "auto", "--cluster-workers", "2"])]  # fmt: skip
    runs: dict[str, dict[str, Any]] = {how: {"how": how, "seconds": [], "outputs": []} for how, _ in ways}
    for number in range(rounds):
        for how, flags in ways[number % 3 :] + ways[: number % 3]:
            out = scratch / f"out-{number}-{ways.index((how, flags))}"
            spec = job_spec(models, clip, out, steps=3, context=8, overlap=2, cache_dir="")
            job = out.with_suffix(".json")
            job.write_text(spec.to_json())
            started = time.perf_counter()
            result = subprocess.run(
                [sys.executable, "-m", "blender_unsample.engine", "restyle", "--job", str(job), "--no-cache",
                 "--progress", "none", *flags],
                cwd=ROOT, capture_output=True, text=True,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            if result.returncode:
                raise RuntimeError(f"{how} failed: {result.stderr[-2000:]}")
            runs[how]["seconds"].append(seconds)
            runs[how]["outputs"].append(out)
    reference = _frames(runs["one process"]["outputs"][0])
    for run in runs.values():
        outputs = run.pop("outputs")
        run["frames"] = len(reference)
        if run["how"] != "one process":
            run["same"] = [_same(reference, _frames(out)) for out in outputs]
    return list(runs.values())


def _frames(folder: Path) -> list[np.ndarray]:
    return [np.asarray(_image(p)) for p in sorted(folder.glob("*.png"))]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _image(path: Path) -> Any:
    from PIL import Image

    return Image.open(path)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        figure = measure("--quick" in sys.argv, Path(folder))
    print(figure.markdown())
    print(json.dumps(figure.raw, indent=1, default=str)[:3000])
