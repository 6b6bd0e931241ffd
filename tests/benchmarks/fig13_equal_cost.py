"""Figure 13: figure 6 read at equal cost. Round-trip error against every model call the round trip makes.

Figure 6 counts the unsample pass's calls only, so a refined Euler and an unrefined DPM++ 2M at the same
step count do not cost the same. Here each setting gets a budget of model calls for the whole round trip
(unsample + resample; every refinement iteration is a call) and as many steps as fit in it without going
over: Euler with refinement r makes 2 + r calls a step (1 + r up, 1 down), DPM++ 2M 2. The calls in the
table are counted on the model, not computed. Same models, data and schedule as figure 6.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fig6_fidelity import tiny_unet
from gaussian_mixture import GaussianMixture
from report import Figure

from blender_unsample.engine.method import schedules
from blender_unsample.engine.method.unsampling import resample, unsample
from blender_unsample.engine.models.families.sd15 import SD15
from blender_unsample.engine.protocol import JobSpec

FIELDS = JobSpec.__dataclass_fields__
DEFAULT = (FIELDS["sampler"].default, FIELDS["inversion_refinement"].default, FIELDS["steps"].default)
SETTINGS = [("euler", 0), ("euler", 1), ("euler", 2), ("euler", 3), ("dpmpp_2m", 0)]  # (sampler, refinement)


HEADERS = [
    "model", "budget (calls)", "sampler", "refinement", "steps", "calls (counted)", "RMS error",
    "against the budget's lowest",
]  # fmt: skip


def calls_per_step(sampler: str, refine: int) -> int:
    return 2 + refine if sampler == "euler" else 2


def steps_within(budget: int, sampler: str, refine: int) -> int:
    """The most steps whose round trip makes no more than ``budget`` model calls."""
    return budget // calls_per_step(sampler, refine)


def round_trip(model, x0, sampler: str, steps: int, refine: int, calls, extra) -> tuple[float, int]:
    """RMS error of unsample -> resample, and the model calls both passes made."""
    sigmas = schedules.ays(steps, SD15.ays_sigmas)
    before = calls()
    noise = unsample(model, x0, sigmas, sampler=sampler, refine=refine, extra_args=extra)
    back = resample(model, noise, sigmas, sampler=sampler, extra_args=extra)
    return float((back - x0).pow(2).mean().sqrt()), calls() - before


def measure(quick: bool, scratch: Path) -> Figure:
    sampler, refine, steps = DEFAULT
    budget = steps * calls_per_step(sampler, refine)  # the defaults' cost: 48 calls
    budgets = sorted({budget // 2, budget, budget * 2} | (set() if quick else {budget * 4}))
    mixture = GaussianMixture.standard()
    raw: list[dict[str, Any]] = []
    with torch.inference_mode():
        unet, extra = tiny_unet(scratch)
        latents = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
        cases = [
            ("closed-form mixture", mixture, mixture.sample(2000, seed=1), None, lambda: mixture.calls),
            ("tiny random UNet, CFG 2", unet, latents, extra, lambda: unet.calls),
        ]
        for name, model, x0, arguments, calls in cases:
            for limit in budgets:
                for kind, iterations in SETTINGS:
                    n = steps_within(limit, kind, iterations)
                    error, spent = round_trip(model, x0, kind, n, iterations, calls, arguments)
                    raw.append(dict(model=name, budget=limit, sampler=kind, refine=iterations, steps=n, calls=spent,
                                    rms=error))  # fmt: skip
    rows = []
    for r in raw:
        best = min((x for x in raw if x["model"] == r["model"] and x["budget"] == r["budget"]), key=lambda x: x["rms"])
        is_default = (r["sampler"], r["refine"], r["steps"]) == DEFAULT
        rows.append([r["model"], r["budget"], r["sampler"], r["refine"], r["steps"], r["calls"], round(r["rms"], 4),
                     ("lowest" if r is best else f"{r['rms'] / best['rms']:.2f}x the lowest")
                     + (" (the defaults)" if is_default else "")])  # fmt: skip
    verdict, notes = _read(raw, budget)
    return Figure(
        number=13,
        title="Fidelity at equal cost: round-trip error against all model calls",
        question=(
            "Figure 6 read at equal cost: for a budget of model calls for the whole round trip (unsample + "
            "resample, each refinement iteration a call), which sampler and refinement come back closest? Euler "
            "with refinement r spends 2 + r calls a step, DPM++ 2M 2; each setting runs the most AYS steps that "
            f"fit in the budget. The defaults ({sampler}, {refine} refinement, {steps} steps) cost {budget} calls. "
            "Same models and data as figure 6; RMS error over the data (spread about 0.8 for the mixture, 1.0 for "
            "the tiny UNet's latents)."
        ),
        headers=HEADERS,
        rows=rows,
        verdict=verdict,
        notes=notes,
        raw={"default": DEFAULT, "default_calls": budget, "budgets": budgets, "cases": raw},
    )


def _read(raw: list[dict[str, Any]], budget: int) -> tuple[str, list[str]]:
    """The verdict and notes, from the table: who wins at the defaults' cost, and at each other budget."""
    parts, notes = [], []
    stands = True
    for name in dict.fromkeys(r["model"] for r in raw):
        at = [r for r in raw if r["model"] == name and r["budget"] == budget]
        default = next(r for r in at if (r["sampler"], r["refine"], r["steps"]) == DEFAULT)
        best = min(at, key=lambda r: r["rms"])
        if best is default:
            parts.append(f"{name}: the defaults are the lowest, {default['rms']:.3g}")
        else:
            stands = False
            parts.append(
                f"{name}: {_setting(best)} is lower, {best['rms']:.3g} against the defaults' {default['rms']:.3g} "
                f"({default['rms'] / best['rms']:.1f}x)"
            )
        winners = []
        for limit in dict.fromkeys(r["budget"] for r in raw):
            row = min((r for r in raw if r["model"] == name and r["budget"] == limit), key=lambda r: r["rms"])
            winners.append(f"{limit} calls: {_setting(row)} ({row['rms']:.3g})")
        notes.append(f"Lowest error, {name}: " + "; ".join(winners) + ".")
    notes.append(_worst_over_models(raw, budget))
    verdict = (
        f"the defaults {'give' if stands else 'do not give'} the lowest error of the settings measured at their own "
        f"cost, {budget} calls: " + "; ".join(parts)
    )
    notes.append(
        "Steps are rounded down to fit the budget, so a setting whose calls a step do not divide it spends a "
        "little less (the calls column), never more. The tiny UNet has random weights: its numbers show how "
        "the samplers behave on a real architecture's denoiser, not on a trained model's."
    )
    return verdict, notes


def _worst_over_models(raw: list[dict[str, Any]], budget: int) -> str:
    """At the defaults' cost, each setting's error over the lowest of its model, at its worst over
    the models: a setting that is good on one model only shows it here."""
    at = [r for r in raw if r["budget"] == budget]
    lowest = {name: min(r["rms"] for r in at if r["model"] == name) for name in {r["model"] for r in at}}
    worst: dict[str, float] = {}
    for r in at:
        name = f"{r['sampler']}" + (f" refinement {r['refine']}" if r["sampler"] == "euler" else "")
        worst[name] = max(worst.get(name, 0.0), r["rms"] / lowest[r["model"]])
    ranked = sorted(worst.items(), key=lambda item: item[1])
    return (
        f"At the defaults' cost ({budget} calls), each setting's error over the lowest, at its worst over both "
        "models (lowest first): " + "; ".join(f"{name} {ratio:.2f}x" for name, ratio in ranked) + "."
    )


def _setting(row: dict[str, Any]) -> str:
    refine = f", refinement {row['refine']}" if row["sampler"] == "euler" else ""
    return f"{row['sampler']}{refine}, {row['steps']} steps"
