"""Figure 5: a second restyle with a new style prompt, against a cold run."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jobs import build_tiny_models, job_spec, write_clip
from report import REPEATS, Figure, spread, summary

from blender_unsample.engine.job import pipeline
from blender_unsample.engine.job.pipeline import restyle
from blender_unsample.engine.job.progress import ProgressTracker


@contextmanager
def unet_calls_by_stage() -> Iterator[Counter]:
    """UNet forward calls in the jobs run in this block, by the pipeline stage they fall in: counted
    on the model itself, not taken from the pipeline's progress events."""
    calls: Counter = Counter()
    stage = ["load"]
    original_load, original_start = pipeline.load_components, ProgressTracker.start

    def start(tracker: ProgressTracker, name: str) -> None:
        stage[0] = name
        original_start(tracker, name)

    def load_and_hook(*args: Any, **kwargs: Any) -> Any:
        components = original_load(*args, **kwargs)
        components.unet.register_forward_pre_hook(lambda module, inputs: calls.update([stage[0]]))
        return components

    pipeline.load_components, ProgressTracker.start = load_and_hook, start
    try:
        yield calls
    finally:
        pipeline.load_components, ProgressTracker.start = original_load, original_start


def measure(quick: bool, scratch: Path) -> Figure:
    models = build_tiny_models(scratch / "models")
    frames = 32 if quick else 64
    clip = scratch / "clip"
    write_clip(clip, frames, size=(64, 64))
    cache = scratch / "cache"
    cold, warm, cold_calls, warm_calls = [], [], [], []
    with torch.inference_mode():  # untimed: the process's first-call costs would land on the first cold run
        restyle(job_spec(models, clip, scratch / "warm-up", cache_dir="", context=16, overlap=4), lambda event: None)
    for run in range(REPEATS if quick else 5):
        shutil.rmtree(cache, ignore_errors=True)
        settings = dict(unsample_prompt="a disc over stripes", cache_dir=str(cache), context=16, overlap=4)
        for prompt, times, counts in (("an oil painting", cold, cold_calls), ("a charcoal sketch", warm, warm_calls)):
            spec = job_spec(models, clip, scratch / f"out{run}{len(times)}", prompt=prompt, **settings)
            with torch.inference_mode(), unet_calls_by_stage() as calls:
                started = time.perf_counter()
                restyle(spec, lambda event: None)
                times.append(time.perf_counter() - started)
            counts.append(calls["unsample"])
    speedups = [c / w for c, w in zip(cold, warm, strict=True)]  # each cold run against the cached run after it
    met = max(warm_calls) == 0 and min(cold_calls) > 0
    return Figure(
        number=5,
        title="Cache: restyling again with a new style",
        question=(
            "How much faster is the second style for the same strip? The unsample prompt describes the "
            f"footage and stays put; {frames} frames at 64x64, tiny SD 1.5 models, 4 steps, refinement 1."
        ),
        headers=["run", "seconds, median (min–max)", "unsample UNet calls (each run)", "runs"],
        rows=[
            ["cold (unsample, then resample)", spread(cold, ".2f"), ", ".join(map(str, cold_calls)), len(cold)],
            ["new style, cached unsample", spread(warm, ".2f"), ", ".join(map(str, warm_calls)), len(warm)],
        ],
        target="a cached restyle skips the unsample pass (no unsample model calls)",
        verdict=(
            f"{'met' if met else 'missed'}: {max(warm_calls)} unsample UNet calls in the cached runs "
            f"(cold: {min(cold_calls)}); {spread(speedups, '.2f', 'x')} faster, cold over cached within each "
            "run (model loading and the resample pass remain)"
        ),
        notes=[
            "UNet calls are counted with a forward hook on the loaded UNet, by the stage the job was in. One "
            "untimed job runs first, so that the process's first-call costs fall on no measured run.",
            "With inversion refinement 1 the unsample pass makes twice the UNet calls of the resample pass, "
            "so with real models (where UNet calls dominate) the saving approaches two thirds of the job.",
        ],
        raw={
            "cold": cold,
            "warm": warm,
            "speedup": summary(speedups),
            "frames": frames,
            "unsample_calls": {"cold": cold_calls, "warm": warm_calls},
        },
    )
