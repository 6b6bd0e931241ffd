"""Figure 1: a whole restyle job's wall time against the time of the model calls it must make."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from jobs import build_tiny_models, job_spec, timed_model_calls, write_clip
from report import REPEATS, Figure, spread, summary

from blender_unsample.engine.job.pipeline import restyle


def measure(quick: bool, scratch: Path) -> Figure:
    models = build_tiny_models(scratch / "models")
    frames = 32 if quick else 64
    clip = scratch / "clip"
    write_clip(clip, frames, size=(64, 64))
    runs = []
    # One untimed job first: the process's first-call costs (lazy imports, kernel choice) are not the
    # job's overhead, and they would land in whichever run came first.
    for run in range(1 + (REPEATS if quick else 5)):
        with timed_model_calls() as spent, torch.inference_mode():
            started = time.perf_counter()
            restyle(job_spec(models, clip, scratch / f"out{run}", context=16, overlap=4), lambda event: None)
            wall = time.perf_counter() - started
        if run:
            runs.append((wall, dict(spent)))
    walls = [wall for wall, _ in runs]
    loads = [spent["load"] for _, spent in runs]
    model = [sum(v for k, v in spent.items() if k != "load") for _, spent in runs]
    others = [w - load - m for w, load, m in zip(walls, loads, model, strict=True)]
    ratios = [(w - load) / m for w, load, m in zip(walls, loads, model, strict=True)]
    with_loading = [w / m for w, m in zip(walls, model, strict=True)]
    median_wall = statistics.median(walls)

    def row(name: str, seconds: list[float]) -> list[str]:
        return [name, spread(seconds, ".3f"), f"{statistics.median(seconds) / median_wall:.0%}"]

    names = sorted(k for k in runs[0][1] if k != "load")
    rows = [row(name, [spent[name] for _, spent in runs]) for name in names]
    rows += [
        row("all model calls", model),
        row("loading the models", loads),
        row("everything else (frames, hints, fusion, sampler, writing)", others),
        row("whole job", walls),
    ]
    ratio = statistics.median(ratios)
    return Figure(
        number=1,
        title="Overhead: the job against its model calls",
        question=(
            f"How much time goes to anything but the models? A {frames}-frame 64x64 clip, tiny SD 1.5 models "
            "(a 16-frame UNet call with CFG takes tens of milliseconds here), 4 steps, context 16 / overlap 4, "
            f"canny ControlNet, inversion refinement 1, CPU; {len(runs)} jobs after an untimed one, each part's "
            "median (min–max) over them."
        ),
        headers=["part", "seconds, median (min–max)", "share of the median job"],
        rows=rows,
        target="the job within 10 % of its model calls (loading the models aside), median of the runs",
        verdict=f"{'met' if ratio <= 1.10 else 'missed'}: {spread(ratios, '.3f', 'x')} the model calls "
        f"({spread(with_loading, '.3f', 'x')} with model loading)",
        notes=[
            "Model time is measured inside each model's forward (UNet with its motion module, ControlNet, "
            "VAE encoder and decoder, text encoders), in the same run. The ratio is taken in each run, then "
            "its median; the parts' medians come from different runs and need not add up to the job's.",
            "Tiny models make everything around them look large: with real models a UNet call is "
            "100-1000x longer while the per-frame work stays the same.",
        ],
        raw={
            "frames": frames,
            "runs": [{"wall": w, "spent": s} for w, s in runs],
            "ratio": summary(ratios),
            "ratio_with_loading": summary(with_loading),
        },
    )
