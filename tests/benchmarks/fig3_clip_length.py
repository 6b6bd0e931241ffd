"""Figure 3: wall time and peak memory against clip length, each job in a worker process of its own."""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from jobs import ROOT, build_tiny_models, job_spec, write_clip
from report import REPEATS, Figure, spread, summary


def run_worker(job_file: Path) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one worker process, as Blender starts it."""
    command = [sys.executable, "-m", "blender_unsample.engine", "restyle", "--job", str(job_file), "--progress", "none"]
    command.append("--no-cache")  # every length computed afresh, never from an earlier run's cache
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the job {job_file} failed")
    return time.perf_counter() - started, usage.ru_maxrss / 1024  # KiB on Linux


LENGTHS = (16, 64, 256)


def measure(quick: bool, scratch: Path) -> Figure:
    models = build_tiny_models(scratch / "models")
    size, steps = (128, 2) if quick else (128, 4)
    rounds = REPEATS if quick else 5
    jobs = {}
    for frames in LENGTHS:
        clip = scratch / f"clip{frames}"
        write_clip(clip, frames, size=(size, size))
        for number in range(rounds):  # each run writes a folder of its own, as a fresh job would
            job = scratch / f"job{frames}-{number}.json"
            out = scratch / f"out{frames}-{number}"
            job.write_text(job_spec(models, clip, out, steps=steps, context=16, overlap=4).to_json())
            jobs[frames, number] = job
    # Rounds of every length, each round in the other order from the last, so that a slow spell on the
    # shared cores falls on different lengths; each further frame's cost is taken within a round.
    raw: list[dict] = []
    for number in range(rounds):
        for frames in LENGTHS if number % 2 == 0 else LENGTHS[::-1]:
            seconds, peak = run_worker(jobs[frames, number])
            raw.append({"round": number, "frames": frames, "seconds": seconds, "peak_mib": peak})
    by_length = {frames: [r for r in raw if r["frames"] == frames] for frames in LENGTHS}
    rows = []
    for frames, runs in by_length.items():
        seconds = [r["seconds"] for r in runs]
        pixels = frames * size * size * 3 / 2**20
        rows.append(
            [frames, spread(seconds, ".1f"), spread([s / frames for s in seconds], ".3f"),
             spread([r["peak_mib"] for r in runs], ".0f"), round(pixels, 1)]
        )  # fmt: skip
    # Linear means a constant cost for each further frame: compare the increments, since the fixed
    # start-up (Python, torch, loading the models) spreads over however many frames there are.
    increments: dict[tuple[int, int], list[float]] = {pair: [] for pair in itertools.pairwise(LENGTHS)}
    growths = []
    for number in range(rounds):
        this = {r["frames"]: r for r in raw if r["round"] == number}
        for earlier, later in increments:
            increments[(earlier, later)].append((this[later]["seconds"] - this[earlier]["seconds"]) / (later - earlier))
        growths.append(this[LENGTHS[-1]]["peak_mib"] / this[LENGTHS[0]]["peak_mib"])
    medians = [statistics.median(values) for values in increments.values()]
    linear = max(medians) / min(medians) <= 1.3
    growth = statistics.median(growths)
    costs = " and ".join(f"{spread(values, '.3f', ' s')} ({a} to {b})" for (a, b), values in increments.items())
    return Figure(
        number=3,
        title="Clip length: time and memory",
        question=(
            f"Does a long strip cost more per frame, or more memory? {size}x{size} frames, tiny SD 1.5 models, "
            f"{steps} steps, context 16 / overlap 4, canny ControlNet, one worker process per job (its start and "
            f"model loading included); {rounds} rounds of the three lengths, median (min–max) over them."
        ),
        headers=["frames", "wall s", "s per frame", "peak RSS MiB", "clip pixels MiB"],
        rows=rows,
        target="time linear in frames (the median costs of a further frame within 1.3x of each other); "
        "peak memory at 256 frames within 1.3x of 16 frames",
        verdict=f"memory {'met' if growth <= 1.3 else 'missed'}: {spread(growths, '.2f', 'x')}; "
        f"time {'met' if linear else 'missed'}: each further frame costs {costs} "
        f"(medians {max(medians) / min(medians):.2f}x apart)",
        notes=[
            "Frames stream from disk in VAE batches and are written as they are decoded; ControlNet hints sit in a "
            "memory-mapped file; only the clip's latents (4 x 16 x 16 floats a frame here) stay in memory.",
            "Peak RSS counts the hint file's pages while they are mapped in.",
            "A further frame's cost is the difference of two lengths' wall times in the same round over the "
            "difference of their frames; the memory growth is 256 frames' peak over 16 frames' in the same round.",
        ],
        raw={
            "runs": raw,
            "size": size,
            "steps": steps,
            "increments": {f"{a}-{b}": summary(values) for (a, b), values in increments.items()},
            "memory_growth": summary(growths),
        },
    )
