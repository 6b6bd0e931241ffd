"""Figure 15: our resample pass on a Wan transformer against diffusers' WanPipeline, per step.

Both sides run the very same WanTransformer3DModel object on the same noise, prompt states, sigmas
(schedules.flow, which the pipeline's FlowMatchEulerDiscreteScheduler is given) and CFG. Runs
alternate ours/theirs, each pair in the other order from the last, with one torch thread.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from flow_video import diffusers_flow_scheduler
from report import REPEATS, Figure, spread

from blender_unsample.engine.method import schedules
from blender_unsample.engine.method.denoisers import Conditioning, FlowTransformerDenoiser, Guidance
from blender_unsample.engine.method.unsampling import resample

STEPS = 8
SHIFT = 3.0
CFG = 5.0  # diffusers' WanPipeline default
TOKENS = 64  # prompt rows (Wan's are 512; the cross-attention is a small share either way)


def _transformer() -> Any:
    """Wan 2.1's transformer class, small but not tiny: a call costs milliseconds, not microseconds."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=24, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=256, ffn_dim=256, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    ).eval()  # fmt: skip


class Clock:
    """Seconds spent inside the transformer's forward, from hooks on the shared module."""

    def __init__(self, model: Any) -> None:
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        model.register_forward_pre_hook(lambda *_: self._begin())
        model.register_forward_hook(lambda *_: self._end())

    def _begin(self) -> None:
        self._start = time.perf_counter()

    def _end(self) -> None:
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def _ours(transformer: Any, noise: torch.Tensor, prompt: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    guidance = Guidance(Conditioning(prompt), Conditioning(negative), CFG)
    with torch.inference_mode():
        return resample(FlowTransformerDenoiser(transformer), noise.clone(), schedules.flow(STEPS, SHIFT),
                        extra_args={"guidance": guidance})  # fmt: skip


def _theirs(pipeline: Any, noise: torch.Tensor, prompt: torch.Tensor, negative: torch.Tensor, frames: int) -> Any:
    size = noise.shape[-1] * 8
    return pipeline(
        prompt_embeds=prompt, negative_prompt_embeds=negative, latents=noise.clone(), num_frames=frames,
        height=size, width=size, num_inference_steps=STEPS, guidance_scale=CFG, output_type="latent",
    ).frames  # fmt: skip


def _pipeline(transformer: Any) -> Any:
    from diffusers import WanPipeline

    scheduler = diffusers_flow_scheduler(STEPS, SHIFT)
    pipeline = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def measure(quick: bool, scratch: Path) -> Figure:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        transformer = _transformer()
        clock = Clock(transformer)
        pipeline = _pipeline(transformer)
        generator = torch.Generator().manual_seed(1)
        latent_frames = 5  # a 17-frame clip
        noise = torch.randn(1, 16, latent_frames, 8, 8, generator=generator)  # 64x64 px
        prompt, negative = torch.randn(2, 1, TOKENS, 64, generator=generator).unbind(0)
        frames = 1 + 4 * (latent_frames - 1)
        ours = _ours(transformer, noise, prompt, negative)  # warm-up pair, and the sanity check
        theirs = _theirs(pipeline, noise, prompt, negative, frames)
        agreement = float((ours - theirs).abs().max() / theirs.abs().max())
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "theirs": []}
        for pair in range(REPEATS if quick else 5):
            order = ("ours", "theirs") if pair % 2 == 0 else ("theirs", "ours")
            for side in order:
                clock.reset()
                start = time.perf_counter()
                if side == "ours":
                    _ours(transformer, noise, prompt, negative)
                else:
                    _theirs(pipeline, noise, prompt, negative, frames)
                wall = time.perf_counter() - start
                runs[side].append({"wall": wall, "inside": clock.seconds, "calls": clock.calls})
    finally:
        torch.set_num_threads(threads)
    return _figure(runs, agreement, latent_frames, frames)


def _figure(runs: dict[str, list[dict[str, float]]], agreement: float, latent_frames: int, frames: int) -> Figure:
    ratios = [o["wall"] / t["wall"] for o, t in zip(runs["ours"], runs["theirs"], strict=True)]
    inside = statistics.median(r["inside"] for side in runs.values() for r in side)
    equal = [(inside + o["wall"] - o["inside"]) / (inside + t["wall"] - t["inside"])
             for o, t in zip(runs["ours"], runs["theirs"], strict=True)]  # fmt: skip
    per_step = {side: [r["wall"] / STEPS * 1000 for r in rows] for side, rows in runs.items()}
    outside = {side: [(r["wall"] - r["inside"]) / STEPS * 1000 for r in rows] for side, rows in runs.items()}
    within = {side: [r["inside"] / STEPS * 1000 for r in rows] for side, rows in runs.items()}
    calls = {side: int(rows[0]["calls"]) for side, rows in runs.items()}
    met = statistics.median(ratios) <= 1.0
    rows = []
    for side in ("ours", "theirs"):
        made = f"{calls[side]} ({calls[side] // STEPS} a step)"
        times = [spread(per_step[side], ".1f"), spread(within[side], ".1f"), spread(outside[side], ".2f")]
        rows.append([side, made, *times])
    return Figure(
        number=15,
        title="Against the peer: diffusers' WanPipeline, per step",
        question=(
            "Is our resample pass on a Wan transformer as fast as diffusers' own WanPipeline? The same "
            "WanTransformer3DModel object (Wan 2.1's class, 4 layers of 4 heads of 24, random weights), "
            f"{latent_frames} latent frames (a {frames}-frame 64x64 clip), {STEPS} Euler steps over "
            f"schedules.flow(shift {SHIFT:g}), CFG {CFG:g}, float32, CPU, one thread."
        ),
        headers=[
            "side",
            "transformer calls",
            "ms a step, median (min–max)",
            "ms a step inside the transformer",
            "ms a step outside it",
        ],
        rows=rows,
        target="no slower per step than diffusers (ours / theirs <= 1.0)",
        verdict=(
            f"{'met' if met else 'missed'}: {spread(ratios, '.3f')}x on the clock, "
            f"{spread(equal, '.3f')}x at equal transformer time; medians over {len(ratios)} pairs"
        ),
        notes=[
            "A step is the unit both sides share: ours puts cond and uncond in one batch (one call a step), "
            "WanPipeline calls the transformer twice, one prompt each. 'At equal transformer time' adds each side's "
            "time outside the transformer, pair by pair, to the median time inside it over all runs: it compares "
            "the loops alone; the clock ratio includes what batching CFG saves inside the transformer. At this "
            f"size (80 tokens a call) much of a call's cost is per operation, so one batched call "
            f"({statistics.median(within['ours']):.1f} ms) costs less than two unbatched ones "
            f"({statistics.median(within['theirs']):.1f} ms); at Wan's real sizes (32,760 tokens for 81 frames at "
            "832x480) the work grows with the batch and the equal-time ratio is the one to expect.",
            f"Sanity: the warm-up pair starts from the same noise and agrees to {agreement:.1e} of the largest value.",
            "Interleaved pairs after an untimed warm-up pair, alternating which side goes first; one torch thread "
            "(restored afterwards).",
        ],
        raw={"runs": runs, "ratios": ratios, "equal_time": equal, "agreement": agreement},
    )
