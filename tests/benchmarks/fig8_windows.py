"""Figure 8: context windows against the exact full-clip answer, on a video model with a closed form.

The model (tests/engine/gaussian_video.py) draws clips of 48 frames, 4 channels × 8×8, from a
zero-mean Gaussian correlated across frames (squared-exponential in time, ``length`` frames, plus a
5 % per-frame part; periodic kernel when the clip loops) and across pixels. Its posterior mean is a
linear solve, so the full-clip answer is exact; through ``ContextWindowDenoiser`` each window is
answered from the Gaussian's marginal over that window's frames, as a motion model trained on
windows of that length would. Every pass uses the engine's defaults: Euler, 16 AYS steps (sd15),
one inversion refinement per unsample step.

Three outputs are compared, windowed against whole-clip, both from the same start:
- round trip: unsample the source, resample with the same model;
- restyle: unsample with the source model, resample with a "style" model (same temporal
  correlation, spatial correlation length 2 px instead of 1) — what a restyle does;
- sample: the forward pass alone, from the same noisy start x0' + sigma_max·eps.
Errors are RMS over every value, divided by the data's spread (1).

Seam error. Frame pair t means frames (t, t+1); on a looping clip pairs wrap, (F-1, 0) included.
A pair is a *boundary* pair when it crosses the edge of some window: (s-1, s) for each window
whose first frame is s, and (e, e+1) for each window whose last frame is e (on a clip that does not
loop, only where both frames exist; on a looping clip modulo F). Every other pair is an *interior*
pair. The frame difference of a pair is the mean |x[t+1] - x[t]| over clips, channels and pixels.
The seam ratio is the mean difference over boundary pairs ÷ the mean over interior pairs: 1.0 is
no visible seam. The same ratio of the exact whole-clip output (same pairs) is given beside it,
since a finite set of clips is not exactly 1.0 by itself.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from gaussian_video import GaussianVideo
from report import Figure

from blender_unsample.engine.method import schedules
from blender_unsample.engine.method.context_windows import ContextWindowDenoiser, context_windows
from blender_unsample.engine.method.unsampling import resample, unsample
from blender_unsample.engine.models.families.sd15 import SD15
from blender_unsample.engine.protocol import JobSpec

FRAMES = 48
SETTINGS = [(8, 2), (8, 4), (16, 2), (16, 4), (16, 8)]  # (context, overlap), overlap < context
DEFAULTS = JobSpec.__dataclass_fields__
DEFAULT = (DEFAULTS["context"].default, DEFAULTS["overlap"].default, DEFAULTS["fusion"].default)


def boundary_pairs(windows: list[list[int]], frames: int, looped: bool) -> tuple[list[int], list[int]]:
    """First frames t of the boundary pairs (t, t+1) and of the interior pairs, as defined above."""
    boundary = set()
    for window in windows:
        start, end = window[0], window[-1]
        if looped:
            boundary |= {(start - 1) % frames, end}
        else:
            boundary |= {start - 1} if start > 0 else set()
            boundary |= {end} if end < frames - 1 else set()
    pairs = range(frames if looped else frames - 1)
    return sorted(boundary), [t for t in pairs if t not in boundary]


def seam_ratio(clip: torch.Tensor, boundary: list[int], interior: list[int]) -> float:
    following = clip.roll(-1, dims=2)  # frame t+1 at t; the wrapped pair is only used when looping
    step = (following - clip).abs().mean(dim=(0, 1, 3, 4))
    return float(step[boundary].mean() / step[interior].mean())


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())  # the data's spread is 1


def passes(source, style, x0, start, sigmas, refine) -> dict[str, torch.Tensor]:
    noise = unsample(source, x0, sigmas, refine=refine)
    return {
        "round trip": resample(source, noise, sigmas),
        "restyle": resample(style, noise, sigmas),
        "sample": resample(source, start, sigmas),
    }


HEADERS = [
    "looped", "corr. length", "context", "overlap", "fusion", "frames run per step",
    "round-trip error", "restyle error", "sample error", "seam, restyle", "seam, sample",
]  # fmt: skip


def _case(source, style, x0, start, exact, sigmas, refine, looped, context, overlap, fusion) -> dict:
    windows = context_windows(FRAMES, context, overlap, looped)
    boundary, interior = boundary_pairs(windows, FRAMES, looped)
    out = passes(*(ContextWindowDenoiser(m, windows, fusion) for m in (source, style)), x0, start, sigmas, refine)
    row = dict(looped=looped, context=context, overlap=overlap, fusion=fusion, windows=len(windows))
    row["frames_per_step"] = len(windows) * context
    row |= {f"error {k}": rms(out[k], exact[k]) for k in out}
    for k in ("restyle", "sample"):
        row[f"seam {k}"] = seam_ratio(out[k], boundary, interior)
        row[f"seam {k} exact"] = seam_ratio(exact[k], boundary, interior)
    row["boundary_pairs"] = boundary
    return row


def _table_row(row: dict) -> list:
    return [
        "yes" if row["looped"] else "no", row["length"], row["context"], row["overlap"], row["fusion"],
        f"{row['windows']} × {row['context']} = {row['frames_per_step']}",
        round(row["error round trip"], 4), round(row["error restyle"], 4), round(row["error sample"], 4),
        f"{row['seam restyle']:.3f} ({row['seam restyle exact']:.3f})",
        f"{row['seam sample']:.3f} ({row['seam sample exact']:.3f})",
    ]  # fmt: skip


def measure(quick: bool, scratch: Path) -> Figure:
    steps = DEFAULTS["steps"].default
    refine = DEFAULTS["inversion_refinement"].default
    sigmas = schedules.ays(steps, SD15.ays_sigmas)
    lengths = (2.0, 4.0, 8.0)  # every clip kind in both modes: quick mode only draws fewer clips
    clips = 8 if quick else 32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few thousand values: threads only add overhead
    try:
        rows, raw = _measure_all(lengths, clips, sigmas, refine)
    finally:
        torch.set_num_threads(threads)
    return _figure(rows, raw, steps, refine, clips)


def _measure_all(lengths, clips, sigmas, refine) -> tuple[list, list]:
    rows, raw = [], []
    with torch.inference_mode():
        for looped in (False, True):
            for length in lengths:
                source = GaussianVideo(FRAMES, length, looped=looped)
                style = GaussianVideo(FRAMES, length, looped=looped, spatial=2.0)
                x0 = source.sample(clips, seed=1)
                start = source.sample(clips, seed=2) + float(sigmas[0]) * torch.randn(
                    x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
                )
                exact = passes(source, style, x0, start, sigmas, refine)
                for context, overlap in SETTINGS:
                    for fusion in ("flat", "pyramid"):
                        row = _case(source, style, x0, start, exact, sigmas, refine, looped, context, overlap, fusion)
                        row["length"] = length
                        raw.append(row)
                        rows.append(_table_row(row))
    return rows, raw


def _figure(rows, raw, steps, refine, clips) -> Figure:
    return Figure(
        number=8,
        title="Context windows on an exact video model",
        question=(
            f"How far do context windows take a {FRAMES}-frame clip from the exact whole-clip answer, and do their "
            "edges show as seams? A Gaussian video model (4×8×8 latents, temporal correlation length in frames) whose "
            f"posterior mean is closed-form; Euler, {steps} AYS steps, refinement {refine}; {clips} clips. Errors: "
            "RMS against the whole-clip output ÷ the data's spread. Seam: frame difference at window edges ÷ inside "
            "windows, windowed output (exact output in brackets); 1.0 = invisible. Boundary pairs are defined in "
            "tests/benchmarks/fig8_windows.py."
        ),
        headers=HEADERS,
        rows=rows,
        notes=_notes(raw),
        raw={"frames": FRAMES, "steps": steps, "refine": refine, "clips": clips, "default": DEFAULT, "cases": raw},
    )


def _notes(raw: list[dict]) -> list[str]:
    """What the table says about the defaults, computed from it: ratios are geometric means over the
    clip kinds measured (looped or not, each correlation length)."""

    def pick(context: int, overlap: int, fusion: str) -> list[dict]:
        chosen = [r for r in raw if (r["context"], r["overlap"], r["fusion"]) == (context, overlap, fusion)]
        return sorted(chosen, key=lambda r: (r["looped"], r["length"]))

    def ratio(a: list[dict], b: list[dict], key: str) -> float:
        logs = [math.log(x[key] / y[key]) for x, y in zip(a, b, strict=True)]
        return math.exp(sum(logs) / len(logs))

    def excess(a: list[dict], b: list[dict]) -> str:  # seam ratio above 1, a against b, lowest–highest clip kind
        return f"{_percent_range(a)} against {_percent_range(b)}"

    context, overlap, fusion = DEFAULT
    default = pick(*DEFAULT)
    flat_wins = sum(
        p["error sample"] < f["error sample"] and p["seam sample"] < f["seam sample"]
        for c, o in SETTINGS
        for p, f in zip(pick(c, o, "pyramid"), pick(c, o, "flat"), strict=True)
    )
    kinds = len(default)
    notes = [
        "Restyle and round trip keep the source's frame-to-frame structure (the unsampled noise carries it): their "
        "seam ratios match the exact output's to within "
        f"{max(abs(r['seam restyle'] - r['seam restyle exact']) for r in raw):.3f} in every row, and their errors "
        f"stay at or below {max(r['error restyle'] for r in raw):.3f} of the data's spread. Seams and errors show in "
        "the forward sample from noise, which is where a restyle with --noise or a strong style change goes.",
        f"Pyramid against flat fusion: lower sample error and lower sample seam in {flat_wins} of "
        f"{len(SETTINGS) * kinds} (context, overlap, clip kind) cases; sample error x"
        f"{ratio(pick(context, overlap, 'pyramid'), pick(context, overlap, 'flat'), 'error sample'):.2f} at "
        f"{context}/{overlap}, seam above 1 (lowest–highest over the clip kinds): "
        f"{excess(pick(context, overlap, 'pyramid'), pick(context, overlap, 'flat'))}.",
        "Restyle error against the whole-clip output, largest over every setting, by temporal correlation length: "
        + ", ".join(
            f"{length:g} frames {max(r['error restyle'] for r in raw if r['length'] == length):.3f}"
            for length in sorted({r["length"] for r in raw})
        )
        + " of the data's spread.",
    ]
    if context == 16 and overlap == 4 and fusion == "pyramid":
        o2, o8, c8 = pick(16, 2, "pyramid"), pick(16, 8, "pyramid"), pick(8, 4, "pyramid")
        cost8 = ratio(o8, default, "frames_per_step")
        notes += [
            f"Context 16 against 8 (overlap 4, pyramid): sample error x{ratio(default, c8, 'error sample'):.2f}, "
            f"restyle error x{ratio(default, c8, 'error restyle'):.2f}, with "
            f"x{ratio(default, c8, 'frames_per_step'):.2f} the frames run per step.",
            f"Overlap 4 against 2 (context 16, pyramid, the same frames run per step on {FRAMES} frames): sample error "
            f"x{ratio(default, o2, 'error sample'):.2f}, seam above 1: {excess(default, o2)}.",
            f"Overlap 8 against 4 (context 16, pyramid): sample error x{ratio(o8, default, 'error sample'):.2f}, "
            f"restyle error x{ratio(o8, default, 'error restyle'):.2f}, seam above 1: {excess(o8, default)}, for "
            f"x{cost8:.2f} the frames run per step.",
        ]
    notes.append(
        f"Defaults ({context}/{overlap}/{fusion}): see the lines above; the sample seam of the default is "
        + ", ".join(f"{r['seam sample']:.2f} (exact {r['seam sample exact']:.2f})" for r in default)
        + " over the clip kinds in table order."
    )
    return notes


def _percent_range(rows: list[dict]) -> str:
    """The sample seam ratio's excess over 1, as "+13–15 %" (lowest–highest over ``rows``) or "+14 %"."""
    low, high = (f"{100 * (f(r['seam sample'] for r in rows) - 1):+.0f}" for f in (min, max))
    if low == high:
        return f"{low} %"
    return f"{low}–{high if low.startswith('-') else high.lstrip('+')} %"  # a sign on both ends only across 0
