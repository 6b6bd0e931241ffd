"""Figure 5: a second restyle with a new style prompt, against a cold run."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import torch
from jobs import build_tiny_models, job_spec, write_clip
from report import Figure

from blender_unsample.engine.pipeline import restyle


def measure(quick: bool, scratch: Path) -> Figure:
    models = build_tiny_models(scratch / "models")
    frames = 32 if quick else 64
    clip = scratch / "clip"
    write_clip(clip, frames, size=(64, 64))
    cache = scratch / "cache"
    cold, warm = [], []
    for run in range(2 if quick else 4):
        shutil.rmtree(cache, ignore_errors=True)
        settings = dict(unsample_prompt="a disc over stripes", cache_dir=str(cache), context=16, overlap=4)
        for prompt, times in (("an oil painting", cold), ("a charcoal sketch", warm)):
            events = []
            with torch.inference_mode():
                started = time.perf_counter()
                restyle(
                    job_spec(models, clip, scratch / f"out{run}{len(times)}", prompt=prompt, **settings), events.append
                )
                times.append(time.perf_counter() - started)
            assert events[-1].unsample_cached == (times is warm)
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    return Figure(
        number=5,
        title="Cache: restyling again with a new style",
        question=(
            "How much faster is the second style for the same strip? The unsample prompt describes the "
            f"footage and stays put; {frames} frames at 64x64, tiny SD 1.5 models, 4 steps, refinement 1."
        ),
        headers=["run", "median seconds", "runs"],
        rows=[["cold (unsample, then resample)", cold_s, len(cold)], ["new style, cached unsample", warm_s, len(warm)]],
        target="a cached restyle skips the unsample pass (no unsample model calls)",
        verdict=f"{cold_s / warm_s:.2f}x faster (model loading and the resample pass remain)",
        notes=[
            "With inversion refinement 1 the unsample pass makes twice the UNet calls of the resample pass, "
            "so with real models (where UNet calls dominate) the saving approaches two thirds of the job.",
        ],
        raw={"cold": cold, "warm": warm, "frames": frames},
    )
