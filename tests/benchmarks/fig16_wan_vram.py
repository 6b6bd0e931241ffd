"""Figure 16: Wan 2.1 1.3B on a 12 GB card, on paper, phase by phase (figure 7's method).

The full-size models are built from their real configs on the meta device (weights counted exactly,
no storage) and run at full size there while figure 7's dispatch mode counts every tensor they make,
from the op that makes it to its last reference; attention is counted as the fused GPU kernels hold
it. A check on the CPU compares that count with the CPU allocator on a narrow Wan transformer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from fig7_vram import BUDGET_GIB, CARD_GIB, CUDA_CONTEXT_GIB, GIB, MARGIN, count, counting, verdict, weight_bytes
from report import Figure

WIDTH, HEIGHT, FRAMES = 832, 480, 81  # Wan 2.1's 480p clip
PROMPT_TOKENS = 512
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers' transformer config; its VAE is diffusers' AutoencoderKLWan defaults.
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
)  # fmt: skip


def _models() -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        transformer = WanTransformer3DModel(**WAN_1_3B).to(torch.bfloat16).eval()
        vae = AutoencoderKLWan().eval()  # float32, as diffusers' Wan pipelines keep it
        encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).to(torch.bfloat16).eval()
    return transformer, vae, encoder


def _phases(transformer: Any, vae: Any, encoder: Any) -> dict[str, dict[str, float]]:
    """Each phase's weights on the card and the peak of what its calls make, in bytes."""
    latent = (1, 16, 1 + (FRAMES - 1) // 4, HEIGHT // 8, WIDTH // 8)
    clip_latents = torch.empty(latent, device="meta").nbytes  # kept on the card throughout
    with counting(encoder) as live:
        encoder(torch.zeros(1, PROMPT_TOKENS, dtype=torch.long, device="meta"))
    prompts, prompts_where = live.peak.bytes, live.peak.where
    encode, encode_where = _encode_peak(vae, FRAMES)
    with counting(transformer) as live:
        transformer(
            hidden_states=torch.empty((2, *latent[1:]), device="meta", dtype=torch.bfloat16),  # CFG: a batch of 2
            timestep=torch.empty(2, device="meta"),
            encoder_hidden_states=torch.empty(2, PROMPT_TOKENS, 4096, device="meta", dtype=torch.bfloat16),
            return_dict=False,
        )
    sample, sample_where = live.peak.bytes, live.peak.where
    with counting(vae) as live:
        vae.decode(torch.empty(latent, device="meta"), return_dict=False)
    decode, decode_where = live.peak.bytes, live.peak.where
    weights = {
        name: weight_bytes(model) for name, model in (("umt5", encoder), ("transformer", transformer), ("vae", vae))
    }
    return {
        "prompts (UMT5 on the card, then freed)": dict(weights=weights["umt5"], made=prompts, where=prompts_where),
        "encode the clip (VAE)": dict(weights=weights["vae"], made=encode + clip_latents, where=encode_where),
        "sample, one guided call over the whole clip": dict(
            weights=weights["transformer"] + weights["vae"], made=sample + clip_latents, where=sample_where
        ),
        "decode the clip (VAE)": dict(weights=weights["vae"], made=decode + clip_latents, where=decode_where),
    }


def _encode_peak(vae: Any, frames: int) -> tuple[int, str]:
    with counting(vae) as live:
        vae.encode(torch.empty(1, 3, frames, HEIGHT, WIDTH, device="meta")).latent_dist.mode()
    return live.peak.bytes, live.peak.where


def check_on_cpu() -> dict[str, float]:
    """The count against the CPU allocator, on a narrow Wan transformer (4 layers of 4 heads of 32):
    one guided call at 256x256 px, 9 frames (768 tokens), real tensors under torch.profiler."""
    from diffusers import WanTransformer3DModel
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    narrow = {**WAN_1_3B, "num_attention_heads": 4, "attention_head_dim": 32, "ffn_dim": 512, "num_layers": 4,
              "text_dim": 128}  # fmt: skip
    transformer = WanTransformer3DModel(**narrow).eval()
    inputs = dict(
        hidden_states=torch.randn(2, 16, 3, 32, 32), timestep=torch.tensor([500.0, 500.0]),
        encoder_hidden_states=torch.randn(2, 64, 128), return_dict=False,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, counting(transformer) as live:
            transformer(**inputs)
    finally:
        torch.set_num_threads(threads)
    level = top = 0
    for event in sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns()):  # fmt: skip
        level += event.nbytes()
        top = max(top, level)
    return {"counted_peak_mib": live.peak.bytes / 2**20, "allocator_peak_mib": top / 2**20}


def measure(quick: bool, scratch: Path) -> Figure:
    started = time.monotonic()
    transformer, vae, encoder = _models()
    phases = _phases(transformer, vae, encoder)
    by_length = {frames: _encode_peak(vae, frames)[0] for frames in (17, FRAMES, 161)}
    check = check_on_cpu()
    rows, peaks = [], {}
    for name, phase in phases.items():
        total = phase["weights"] + phase["made"]
        peaks[name] = total
        rows.append([name, round(phase["weights"] / GIB, 2), round(phase["made"] / GIB, 2), round(total / GIB, 2),
                     verdict(total), phase["where"]])  # fmt: skip
    worst = max(peaks, key=peaks.__getitem__)
    without_encoder = {name: peak for name, peak in peaks.items() if not name.startswith("prompts")}
    worst_job = max(without_encoder, key=without_encoder.__getitem__)
    gap = check["counted_peak_mib"] / check["allocator_peak_mib"] - 1
    return Figure(
        number=16,
        title="Wan 2.1 1.3B on a 12 GB card, on paper",
        question=(
            f"Does Wan 2.1 T2V 1.3B restyle an {WIDTH}x{HEIGHT}, {FRAMES}-frame clip on a 12 GB card? Its real configs "
            f"on the meta device (transformer {count(transformer) / 1e9:.2f} B parameters in bfloat16, VAE "
            f"{count(vae) / 1e6:.0f} M in float32, UMT5-XXL's encoder {count(encoder) / 1e9:.2f} B in bfloat16), "
            f"each phase of the job counted as figure 7 counts SD's: prompt states of {PROMPT_TOKENS} tokens, the "
            "whole clip through the causal VAE, one guided transformer call (CFG batch of two) over all "
            f"{1 + (FRAMES - 1) // 4} latent frames at once, the clip decoded."
        ),
        headers=["phase", "weights GiB", "made by its calls GiB (peak)", "total GiB", "12 GB card", "peak in"],
        rows=rows,
        target=f"every phase within a 12 GB card ({BUDGET_GIB:g} GiB after the CUDA context, {MARGIN:.0%} margin)",
        verdict=(
            f"On paper, not measured on a GPU. Without the prompts, the largest phase is '{worst_job}' at "
            f"{peaks[worst_job] / GIB:.2f} GiB: {verdict(peaks[worst_job])}. The prompts need UMT5-XXL's "
            f"{phases[next(iter(phases))]['weights'] / GIB:.1f} GiB of weights on the card: "
            f"{verdict(peaks[next(iter(phases))])} (largest phase overall: '{worst}'); encoding the two prompts on the "
            "CPU (seconds) and keeping their states in the unsample cache takes it off the card."
        ),
        notes=[
            f"{CARD_GIB:g} GiB card, less {CUDA_CONTEXT_GIB:g} GiB of CUDA context; 'fits' leaves {MARGIN:.0%} for "
            "the allocator's fragmentation and cuDNN workspaces, 'tight' does not.",
            "Weights: the transformer and the VAE both stay on the card while sampling (offloading the VAE saves "
            f"{weight_bytes(vae) / GIB:.2f} GiB); diffusers keeps a few small transformer modules in float32 "
            "(rope, time embedding, norms), counted here in bfloat16: well under 0.1 GiB.",
            "The VAE is diffusers' causal AutoencoderKLWan, which encodes and decodes a few frames at a time with a "
            "cache of the previous chunk's features: its peak grows only by the clip's own pixels (float32), "
            + ", ".join(f"{v / GIB:.2f} GiB at {n} frames" for n, v in by_length.items())
            + " for the encode; the clip's latents are kept on the card throughout (counted in every phase).",
            f"Check on the CPU (a narrow Wan transformer, one guided call at 256x256 px, 9 frames): the count is "
            f"{check['counted_peak_mib']:.1f} MiB against the CPU allocator's {check['allocator_peak_mib']:.1f} MiB "
            f"({gap:+.1%}).",
            f"Counted in {time.monotonic() - started:.0f} s on the meta device: no weights were made.",
        ],
        raw={
            "phases": phases,
            "check": check,
            "peaks_gib": {k: v / GIB for k, v in peaks.items()},
            "encode_peak_by_frames": by_length,
        },
    )
