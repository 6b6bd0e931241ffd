"""Figure 7: GPU memory, on paper. Will a restyle job fit in a 12 GB card?

Weights are counted exactly: every model is built from its real config on the meta device, where
a parameter has a shape and a dtype but no storage. Activations are measured, not guessed: the
real diffusers forward passes run at full size on the meta device (shapes only, no arithmetic)
while a dispatch mode counts the bytes of every tensor they create, from the op that makes it to
the moment Python drops the last reference. That is what a GPU's allocator holds at each point,
minus what lives below the dispatcher (cuDNN workspaces, fragmentation, the CUDA context): the
notes put numbers on those. The same count is checked against the CPU allocator on a small real
run, and by figure 10 (fig10_fullsize.py) on the full-size SD 1.5 motion UNet. Attention is
counted as PyTorch's fused SDPA kernels hold it on a GPU: output and row statistics, never the
attention matrix.

The job is modelled phase by phase as ``engine/job/pipeline.py`` runs it: the prompts, by the text
encoders alone (freed after); the frames, VAE encoded ``vae_batch`` at a time; the clip, sampled a
context window at a time (CFG doubles the batch); and the frames decoded ``vae_batch`` at a time.
``--vae-batch`` 0, the default, is the engine's own choice (``default_vae_batch``): 8 frames a
call for SD1.5, 1 for SDXL's own VAE in fp32, 2 for an fp16-fix one. Without ``--cpu-offload`` the
UNet with its motion module, the ControlNet and the VAE stay on the GPU from the first frame
encoded to the last one decoded. With it, each phase brings only its own models onto the GPU and
sends them back to the CPU after (``Residency.phase`` in ``engine/job/devices.py``): the text encoders
for the prompts, the VAE for encoding and for decoding, the UNet and the ControlNet for sampling.
``--vae-tiling`` (``tile_vae``) makes the VAE work in 256-px tiles overlapping by a quarter, even
at 512² and 1024²; it is measured through diffusers' own tiled encode and decode, tile by tile and
blend by blend. The clip's latents stay on the GPU throughout.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from report import Figure
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for the engine's own Hotshot-XL norms and samplers

GIB = 2**30
CARD_GIB = 12.0  # "12 GB" cards (RTX 3060, 4070) have 12 GiB
CUDA_CONTEXT_GIB = 0.5  # driver context and kernels: outside torch's allocator, seen by nvidia-smi
MARGIN = 0.15  # allocator fragmentation and cuDNN workspaces on top of the live-tensor peak
BUDGET_GIB = CARD_GIB - CUDA_CONTEXT_GIB
CHECK_BATCH = 8  # frames of the VAE calls that check that a call's bytes grow linearly with its frames
BLOCK = 512  # the CUDA caching allocator rounds every block up to a multiple of 512 bytes

# --- the real configs (Hugging Face config.json of each reference model, architecture keys only) ---

SD15_UNET: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "sample_size": 64,
}
SDXL_UNET: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
}
ANIMATEDIFF_V2: dict[str, Any] = {"use_motion_mid_block": True}  # MotionAdapter defaults are v1-5-2's
ANIMATEDIFF_SDXL: dict[str, Any] = {"block_out_channels": (320, 640, 1280), "use_motion_mid_block": False}
HOTSHOT_XL: dict[str, Any] = {  # as engine/hotshot.py builds it from the temporal-layers file
    "block_out_channels": (320, 640, 1280),
    "motion_num_attention_heads": 8,
    "motion_norm_num_groups": 32,
    "motion_max_seq_length": 24,
    "use_motion_mid_block": False,
}
VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}
SDXL_VAE: dict[str, Any] = {"scaling_factor": 0.13025}  # how the engine tells SDXL's VAE from SD1.5's
CLIP_L: dict[str, Any] = {  # openai/clip-vit-large-patch14 text model
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
CLIP_BIGG: dict[str, Any] = {  # SDXL's text_encoder_2, OpenCLIP ViT-bigG/14, with projection
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
# Published totals (model cards, papers), for the check.
KNOWN_PARAMS = {
    "SD1.5 UNet": 860e6,
    "SDXL UNet": 2.57e9,
    "VAE": 84e6,
    "CLIP ViT-L/14 text": 123e6,
    "OpenCLIP bigG text": 695e6,
}


@dataclass(frozen=True)
class Setup:
    name: str
    family: str  # sd15 or sdxl
    motion: str  # animatediff or hotshot
    size: int  # frame width = height, pixels
    frames: int  # context window
    vae_fp32: bool = False


SETUPS = [
    Setup("SD1.5 512², AnimateDiff v2, 16 frames", "sd15", "animatediff", 512, 16),
    Setup("SDXL 1024², AnimateDiff SDXL, 8 frames", "sdxl", "animatediff", 1024, 8, vae_fp32=True),
    Setup("SDXL 1024², AnimateDiff SDXL, 16 frames", "sdxl", "animatediff", 1024, 16, vae_fp32=True),
    Setup("SDXL 1024², AnimateDiff SDXL, 16 frames, fp16-fix VAE", "sdxl", "animatediff", 1024, 16),
    Setup("SDXL 1024², Hotshot-XL, 8 frames", "sdxl", "hotshot", 1024, 8, vae_fp32=True),
]


# --- counting live tensor bytes ----------------------------------------------------------------------


@dataclass
class Peak:
    bytes: int = 0
    where: str = ""  # the module running when the peak was reached
    largest: int = 0  # the largest single tensor created
    largest_shape: tuple[int, ...] = ()


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of storages created while active, until each is freed; keeps the peak.

    Storages made before (weights, buffers) are never counted, nor views of them. Each storage is
    rounded up as the CUDA caching allocator rounds it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, weakref.ref]] = {}
        self.current = 0
        self.peak = Peak()
        self.made: Counter[str] = Counter()  # bytes created, per op
        self.modules: list[str] = []
        self.op = ""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        composite = torch._C.DispatchKey.CompositeImplicitAutograd
        if composite not in func.py_kernels and torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), composite):
            # Run composite ops (group_norm, linear, ...) op by op, so that what they make inside (a
            # contiguous copy, mean and rstd) is counted too; only with the C++ kernel eager CUDA runs,
            # never a Python decomposition (upsample's makes index tensors and copies eager never does).
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        self.op = str(func.overloadpacket)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor, inputs)
        return out

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live or key in inputs:  # a view, an in-place result, or something made before
            return
        size = -(-storage.nbytes() // BLOCK) * BLOCK

        def freed(_: object, key: int = key, size: int = size) -> None:
            if self.live.pop(key, None) is not None:
                self.current -= size

        self.live[key] = (size, weakref.ref(storage, freed))
        self.current += size
        self.made[self.op] += size
        if size > self.peak.largest:
            self.peak.largest, self.peak.largest_shape = size, tuple(tensor.shape)
        if self.current > self.peak.bytes:
            self.peak.bytes = self.current
            self.peak.where = self.modules[-1] if self.modules else ""


class FusedAttention(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` as the fused CUDA kernels (flash, memory-efficient, cuDNN)
    allocate it: the output, laid out (batch, tokens, heads, dim), and fp32 row statistics."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        # Positional (diffusers' UNet processors) or by name (diffusers' attention dispatch, Wan's).
        query = args[0] if args else kwargs["query"]
        value = args[2] if len(args) > 2 else kwargs["value"]
        if query.ndim != 4:
            return torch.empty((*query.shape[:-1], value.shape[-1]), dtype=query.dtype, device=query.device)
        batch, heads, tokens, _ = query.shape
        statistics = torch.empty(batch, heads, tokens, dtype=torch.float32, device=query.device)
        del statistics  # the kernel's logsumexp: a transient in inference
        out = torch.empty(batch, tokens, heads, value.shape[-1], dtype=query.dtype, device=query.device)
        return out.transpose(1, 2)


@contextlib.contextmanager
def counting(*models: nn.Module) -> Iterator[LiveBytes]:
    """Count live bytes inside the block, noting which module of ``models`` runs at the peak."""
    names = {
        id(module): f"{type(model).__name__}.{name}".rstrip(".")
        for model in models
        for name, module in model.named_modules()
    }
    tracker = LiveBytes()

    def enter(module: nn.Module, _args: Any) -> None:
        tracker.modules.append(names.get(id(module), tracker.modules[-1] if tracker.modules else ""))

    def leave(module: nn.Module, _args: Any, _out: Any) -> None:
        tracker.modules.pop()

    hooks = [
        nn.modules.module.register_module_forward_pre_hook(enter),
        nn.modules.module.register_module_forward_hook(leave),
    ]
    try:
        with torch.inference_mode(), FusedAttention(), tracker:
            yield tracker
    finally:
        for hook in hooks:
            hook.remove()


# --- the models, on the meta device ------------------------------------------------------------------


@dataclass
class Models:
    unet: nn.Module  # UNetMotionModel
    controlnet: nn.Module
    vae: nn.Module
    text_encoders: list[nn.Module]
    params: dict[str, int] = field(default_factory=dict)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_bytes(*models: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in models for t in (*m.parameters(), *m.buffers()))


def motion_unet(setup: Setup, device: str = "meta") -> tuple[nn.Module, nn.Module, nn.Module]:
    """The setup's image UNet, its motion module, and the motion UNet made of the two as the engine makes
    it (``UNetMotionModel.from_unet2d``, engine/models/components.py; Hotshot-XL's norms as hotshot.py
    sets them): fp32, diffusers' random initialisation, on ``device`` (meta: shapes only)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    xl = setup.family == "sdxl"
    adapter_config = HOTSHOT_XL if setup.motion == "hotshot" else ANIMATEDIFF_SDXL if xl else ANIMATEDIFF_V2
    with torch.device(device):
        unet2d = UNet2DConditionModel(**(SDXL_UNET if xl else SD15_UNET))
        adapter = MotionAdapter(**adapter_config)
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    if setup.motion == "hotshot":
        from blender_unsample.engine.models.hotshot import apply_hotshot_norms

        apply_hotshot_norms(unet)
    return unet2d, adapter, unet


def build(setup: Setup) -> Models:
    """The setup's models, fp16 (VAE fp32 where the job keeps it so), on the meta device."""
    from diffusers import AutoencoderKL, ControlNetModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    xl = setup.family == "sdxl"
    unet2d, adapter, unet = motion_unet(setup)
    with torch.device("meta"):
        controlnet = ControlNetModel.from_unet(unet2d)
        vae = AutoencoderKL(**VAE, **(SDXL_VAE if xl else {}), sample_size=setup.size)  # the configs' sample_size
        encoders = [CLIPTextModel(CLIPTextConfig(**CLIP_L))]
        if xl:
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)))
    family = "SDXL" if xl else "SD1.5"
    motion = {
        "hotshot": "Hotshot-XL temporal layers",
        "animatediff": f"AnimateDiff {'SDXL' if xl else 'v2'} motion module",
    }
    params = {
        f"{family} UNet": count(unet2d),
        motion[setup.motion]: count(adapter),
        f"{family} motion UNet (UNet + motion module)": count(unet),
        f"{family} ControlNet (from_unet)": count(controlnet),
        "VAE": count(vae),
        "CLIP ViT-L/14 text": count(encoders[0]),
    }
    if xl:
        params["OpenCLIP bigG text"] = count(encoders[1])
    half = torch.float16
    models = [unet.to(half), controlnet.to(half), vae.to(torch.float32 if setup.vae_fp32 else half)]
    return Models(*models, [e.to(half) for e in encoders], params)


# --- the phases of a job -----------------------------------------------------------------------------


@contextlib.contextmanager
def feed_forward_chunked(models: Models, chunk: bool) -> Iterator[None]:
    """The UNet and ControlNet with --chunk-feed-forward (devices.chunk_feed_forward) for a while."""
    from blender_unsample.engine.job.devices import chunk_feed_forward

    chunked = (models.unet, models.controlnet) if chunk else ()
    for model in chunked:
        chunk_feed_forward(model)
    try:
        yield
    finally:
        for module in (m for model in chunked for m in model.modules()):
            if hasattr(module, "set_chunk_feed_forward"):
                module.set_chunk_feed_forward(None, 0)


def unet_step(
    models: Models,
    setup: Setup,
    frames: int,
    size: int,
    control: bool = True,
    device: str = "meta",
    chunk: bool = False,
) -> LiveBytes:
    """One guided model call on one context window, as denoisers.py and controlnet.py make it, its live
    tensor bytes counted."""
    watched = (models.unet, models.controlnet) if control else (models.unet,)
    with feed_forward_chunked(models, chunk), counting(*watched) as tracker:
        guided_call(models, setup, frames, size, control, device)
    return tracker


def guided_call(
    models: Models, setup: Setup, frames: int, size: int, control: bool = True, device: str = "meta"
) -> None:
    """The call ``unet_step`` counts, uncounted: the window's inputs made on ``device``, one guided
    model call (CFG: a batch of two), its output guided. Figure 10 runs it on the CPU for real."""
    unet, controlnet = models.unet, models.controlnet if control else None
    dtype, xl = unet.dtype, setup.family == "sdxl"
    side, text = size // 8, unet.config.cross_attention_dim
    x = torch.randn(1, 4, frames, side, side, device=device)  # the window, sliced from the clip
    embeds = [torch.randn(1, 77, text, device=device) for _ in range(2)]  # uncond, cond
    model_input = (x / 2.0).to(dtype)
    model_input = torch.cat([model_input, model_input])  # CFG: one batch of two
    states = torch.cat([e.expand(frames, -1, -1) for e in embeds]).to(dtype)  # one per frame
    added = None
    if xl:
        added = {"text_embeds": torch.randn(2, 1280, device=device), "time_ids": torch.randn(2, 6, device=device)}
        added = {k: v.to(dtype) for k, v in added.items()}
    timestep = torch.tensor(500.0, device=device)
    residuals = {}
    if controlnet is not None:
        # The window's hints, uploaded once and cached, repeated for both CFG halves.
        pixels = torch.randint(0, 255, (frames, size, size, 3), dtype=torch.uint8, device=device)
        hints = pixels.permute(0, 3, 1, 2).to(dtype) / 255
        images = model_input.permute(0, 2, 1, 3, 4).reshape(2 * frames, 4, side, side)
        per_image = {k: v.repeat_interleave(frames, dim=0) for k, v in added.items()} if added else None
        down, mid = controlnet(
            images, timestep, encoder_hidden_states=states, controlnet_cond=hints.repeat(2, 1, 1, 1),
            conditioning_scale=0.3, added_cond_kwargs=per_image, return_dict=False,
        )  # fmt: skip
        residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        del images, per_image, down, mid
    out = unet(
        model_input, timestep, encoder_hidden_states=states, added_cond_kwargs=added, return_dict=False,
        **residuals,
    )[0].to(x.dtype)  # fmt: skip
    del residuals
    denoised = x - 2.0 * out.reshape(2, *x.shape)
    del out
    uncond, cond = denoised.unbind(0)
    guided = torch.lerp(uncond, cond, 2.0)
    del guided


def vae_pass(vae: Any, size: int, batch: int, decode: bool, tiled: bool = False) -> LiveBytes:
    """One VAE call on ``batch`` frames, as pipeline.py's _read_source / _decode_frames make it; ``tiled``:
    with the job's --vae-tiling, set up by the engine's own ``tile_vae``."""
    from blender_unsample.engine.job.devices import tile_vae

    untiled = (vae.tile_sample_min_size, vae.tile_latent_min_size)
    if tiled:
        tile_vae(vae)
    scale = vae.config.scaling_factor
    try:
        with counting(vae) as tracker:
            if decode:
                chunk = torch.randn(batch, 4, size // 8, size // 8, device="meta") / scale
                images = vae.decode(chunk.to(vae.dtype), return_dict=False)[0]
                pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
                del images, pixels  # .cpu() follows; the GPU side ends here
            else:
                pixels = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8, device="meta")
                images = pixels.permute(0, 3, 1, 2).to(vae.dtype) / 127.5 - 1
                latents = vae.encode(images).latent_dist.mean * scale
                del images, latents
    finally:
        vae.disable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = untiled
    return tracker


def tiles(vae: Any, size: int) -> tuple[int, int, int, float]:
    """How --vae-tiling cuts a ``size``² frame for decoding, as AutoencoderKL.tiled_decode steps over the
    latents: tiles a side, tile side and overlap in pixels, and the decoder's work against one whole frame."""
    from blender_unsample.engine.job.devices import tile_vae

    untiled = (vae.tile_sample_min_size, vae.tile_latent_min_size)
    tile_vae(vae)
    latent, pixels = vae.tile_latent_min_size, vae.tile_sample_min_size
    step = int(latent * (1 - vae.tile_overlap_factor))
    vae.disable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = untiled
    starts = range(0, size // 8, step)
    covered = sum(min(latent, size // 8 - start) for start in starts) / (size // 8)
    return len(starts), pixels, int(pixels * vae.tile_overlap_factor), covered**2


def text_encode(models: Models) -> LiveBytes:
    with counting(*models.text_encoders) as tracker:
        tokens = torch.zeros(1, 77, dtype=torch.long, device="meta")
        for encoder in models.text_encoders:
            out = encoder(tokens, output_hidden_states=True)
            del out
    return tracker


def clip_bytes_per_frame(latent_side: int) -> float:
    """Clip-length fp32 latents the sampling passes keep on the GPU (source latents, the unsampled
    noise, the sampler's x and denoised, the window fusion's sums), per clip frame: measured on the
    engine's own samplers and window fusion with a stand-in model, as a slope over clip length."""
    from blender_unsample.engine.method.context_windows import ContextWindowDenoiser, context_windows
    from blender_unsample.engine.method.samplers import sample_dpmpp_2m, sample_euler_inverse

    def stand_in(x: torch.Tensor, sigma: float, **_: Any) -> torch.Tensor:
        return x * 0.5  # a fresh window-sized fp32 tensor, as the guided UNet call returns

    peaks = []
    for frames in (40, 80):
        with counting() as tracker:
            latents = torch.randn(1, 4, frames, latent_side, latent_side, device="meta")
            model = ContextWindowDenoiser(stand_in, context_windows(frames, 16, 4))
            noise = sample_euler_inverse(model, latents, [0.03, 1.0, 14.6], refine=1)
            styled = sample_dpmpp_2m(model, noise, [14.6, 1.0, 0.5, 0.0])
            del styled
        peaks.append(tracker.peak.bytes)
    return (peaks[1] - peaks[0]) / 40


def check_on_cpu() -> dict[str, float]:
    """The counter against the CPU allocator, on a narrow SD1.5-shaped motion UNet with ControlNet: one
    guided step at 128² and 4 frames, real tensors under torch.profiler; and the same step on meta."""
    from diffusers import ControlNetModel, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    widths = (32, 64, 128, 128)
    narrow = {**SD15_UNET, "block_out_channels": widths, "cross_attention_dim": 64}
    setup = Setup("check", "sd15", "animatediff", 128, 4)  # 16² latents
    result: dict[str, float] = {}
    for device in ("meta", "cpu"):
        with torch.device(device):
            unet2d = UNet2DConditionModel(**narrow)
            unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(block_out_channels=widths))
            controlnet = ControlNetModel.from_unet(unet2d)
        models = Models(unet.eval(), controlnet.eval(), nn.Identity(), [])
        if device == "meta":
            result["meta_counted_peak_mib"] = unet_step(models, setup, 4, 128, device=device).peak.bytes / 2**20
            continue
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny ops: threads only add contention on a busy machine
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                tracker = unet_step(models, setup, 4, 128, device=device)
        finally:
            torch.set_num_threads(threads)
    events = list(prof.profiler.kineto_results.events())
    memory = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())
    # Convolution kernels allocate scratch space of their own (oneDNN here, cuDNN workspaces on a GPU).
    convs: list[list[int]] = []
    for start, end in sorted((e.start_ns(), e.end_ns()) for e in events if "convolution" in e.name()):
        if convs and start <= convs[-1][1]:
            convs[-1][1] = max(convs[-1][1], end)  # nested calls of one convolution
        else:
            convs.append([start, end])
    starts = [start for start, _ in convs]
    level = top = inside = outside = 0
    for event in memory:
        level += event.nbytes()
        top = max(top, level)
        if event.nbytes() > 0:
            at = bisect.bisect_right(starts, event.start_ns()) - 1
            in_conv = at >= 0 and convs[at][1] >= event.start_ns()
            inside, outside = inside + event.nbytes() * in_conv, outside + event.nbytes() * (not in_conv)
    made = tracker.made
    counted_conv = sum(size for op, size in made.items() if "conv" in op)
    mib = 2**20
    result |= {
        "cpu_counted_peak_mib": tracker.peak.bytes / mib,
        "cpu_allocator_peak_mib": top / mib,
        "allocated_outside_convolutions_mib": outside / mib,
        "counted_outside_convolutions_mib": (sum(made.values()) - counted_conv) / mib,
        "allocated_in_convolutions_mib": inside / mib,
        "counted_convolution_outputs_mib": counted_conv / mib,
    }
    return result


# --- the figure --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The job options that move the peak."""

    context: int
    vae_batch: int = 0  # 0: the engine's default for the setup's VAE, as --vae-batch 0
    offload: bool = False
    control: bool = True
    size: int = 0  # 0: the setup's own
    tiling: bool = False
    chunk: bool = False  # --chunk-feed-forward

    def flags(self, setup: Setup) -> str:
        flags = [f"--width {self.size} --height {self.size}"] if self.size and self.size != setup.size else []
        flags += [f"--context {self.context}"] * (self.context != setup.frames)
        flags += ["--chunk-feed-forward"] * self.chunk
        flags += ["--control none"] * (not self.control) + ["--cpu-offload"] * self.offload
        flags += ["--vae-tiling"] * self.tiling + [f"--vae-batch {self.vae_batch}"] * bool(self.vae_batch)
        return " ".join(flags) or "the defaults"


class Lab:
    """Builds each setup's models once and measures each step and VAE call once, on demand."""

    def __init__(self, quick: bool = False) -> None:
        self.quick = quick  # skips the slowest check: tiled decodes of CHECK_BATCH frames
        self.built: dict[tuple[str, str, bool], Models] = {}
        self.memo: dict[tuple[Any, ...], Any] = {}

    def models(self, setup: Setup) -> Models:
        key = (setup.family, setup.motion, setup.vae_fp32)
        if key not in self.built:
            self.built[key] = build(setup)
        return self.built[key]

    def once(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def step(self, setup: Setup, frames: int, control: bool, size: int, chunk: bool = False) -> LiveBytes:
        key = ("step", setup.family, setup.motion, frames, control, size, chunk)
        return self.once(key, lambda: unet_step(self.models(setup), setup, frames, size, control, chunk=chunk))

    def vae_line(self, setup: Setup, size: int, decode: bool, tiled: bool = False) -> tuple[int, int]:
        """(fixed, per frame) bytes of one VAE call, from calls on 1 and 2 frames."""

        def make() -> tuple[int, int]:
            one, two = (vae_pass(self.models(setup).vae, size, n, decode, tiled).peak.bytes for n in (1, 2))
            return one - (two - one), two - one

        return self.once(("vae", setup.family, setup.vae_fp32, size, decode, tiled), make)

    def default_batch(self, setup: Setup) -> int:
        """Frames per VAE call at --vae-batch 0: the engine's own choice for this VAE and dtype."""
        from blender_unsample.engine.job.devices import default_vae_batch

        return default_vae_batch(setup.family, self.models(setup).vae.dtype)

    def text(self, setup: Setup) -> int:
        models = self.models(setup)
        key = ("text", setup.family)
        return self.once(key, lambda: weight_bytes(*models.text_encoders) + text_encode(models).peak.bytes)

    def decode_at_batch(self, setup: Setup, tiled: bool) -> int:
        vae = self.models(setup).vae
        key = ("decode", setup.family, setup.vae_fp32, tiled)
        return self.once(key, lambda: vae_pass(vae, setup.size, CHECK_BATCH, True, tiled).peak.bytes)

    def clip_per_frame(self, size: int) -> float:
        return self.once(("clip", size), lambda: clip_bytes_per_frame(size // 8))

    def weights(self, setup: Setup, control: bool = True) -> dict[str, int]:
        models = self.models(setup)
        return {
            "unet": weight_bytes(models.unet),
            "controlnet": weight_bytes(models.controlnet) if control else 0,
            "vae": weight_bytes(models.vae),
        }

    def phases(self, setup: Setup, options: Options) -> dict[str, float]:
        """Peak bytes of each phase of a job whose clip is one window, with models placed as pipeline.py
        and devices.py place them."""
        size = options.size or setup.size
        w = self.weights(setup, options.control)
        resident = w["unet"] + w["controlnet"] + w["vae"]
        encode, decode = (self.vae_line(setup, size, d, options.tiling) for d in (False, True))
        step = self.step(setup, options.context, options.control, size, options.chunk).peak.bytes
        batch = options.vae_batch or self.default_batch(setup)
        latents = clip_latent_bytes(size) * setup.frames
        # Without offload, all three stay on the GPU from the first frame encoded to the last decoded.
        # With it, each phase has only its own models there (Residency.phase): the text encoders, then
        # the VAE, then the UNet and ControlNet, then the VAE again.
        return {
            "prompts": self.text(setup),
            # The clip's latents fill in, a VAE call at a time, beside the call.
            "encode": (w["vae"] if options.offload else resident) + encode[0] + encode[1] * batch + latents,
            "sample": (resident - w["vae"] * options.offload) + step + self.clip_per_frame(size) * setup.frames,
            # The styled latents wait on the GPU while they are decoded.
            "decode": (w["vae"] if options.offload else resident) + decode[0] + decode[1] * batch + latents,
        }

    def peak(self, setup: Setup, options: Options) -> tuple[float, str]:
        phases = self.phases(setup, options)
        phase = max(phases, key=phases.__getitem__)
        return phases[phase], phase


def verdict(peak: float) -> str:
    if peak * (1 + MARGIN) <= BUDGET_GIB * GIB:
        return "fits"
    return "tight" if peak <= BUDGET_GIB * GIB else "over"


def cheapest_fix(lab: Lab, setup: Setup) -> tuple[Options, float]:
    """The first job options that fit, the cheapest tried first: feed-forward chunking (a little
    slower, the same picture), fewer frames per VAE call than the default (a little slower), CPU
    offload (a few model moves per job), VAE tiling (slower VAE calls, faint tile seams possible), no
    ControlNet (less hold on the structure), a shorter context (less coherent motion); failing all,
    the largest resolution that fits with all of them."""
    contexts = [setup.frames] + [8] * (setup.frames > 8)
    default = lab.default_batch(setup)
    batches = [0] + [n for n in (4, 2, 1) if n < default]  # 0: the default
    for context in contexts:
        for control in (True, False):
            for tiling in (False, True):
                for offload in (False, True):
                    for vae_batch in batches:
                        for chunk in (False, True):
                            options = Options(context, vae_batch, offload, control, tiling=tiling, chunk=chunk)
                            peak, _ = lab.peak(setup, options)
                            if verdict(peak) == "fits":
                                return options, peak
    frugal = Options(contexts[-1], 1 if default > 1 else 0, True, False, tiling=True, chunk=True)
    weights = sum(lab.weights(setup, control=False).values())
    peak, _ = lab.peak(setup, frugal)
    # Activations grow with the pixel count: guess the side from that, then measure it.
    room = BUDGET_GIB * GIB / (1 + MARGIN) - weights
    side = max(64, int(setup.size * math.sqrt(max(room, 0) / (peak - weights)) // 64 * 64))
    while True:
        options = Options(frugal.context, frugal.vae_batch, True, False, side, tiling=True, chunk=True)
        peak, _ = lab.peak(setup, options)
        if verdict(peak) == "fits" or side <= 256:
            return options, peak
        side -= 64


def frames_per_vae_call(lab: Lab, setup: Setup, offload: bool, tiling: bool = False) -> int:
    """The most frames per VAE call (--vae-batch goes to 64) with which encoding and decoding both fit."""
    options = [Options(setup.frames, n, offload, tiling=tiling) for n in range(1, 65)]

    def fits(o: Options) -> bool:
        phases = lab.phases(setup, o)
        return verdict(phases["encode"]) == verdict(phases["decode"]) == "fits"

    return max((o.vae_batch for o in options if fits(o)), default=0)


def clip_latent_bytes(size: int) -> int:
    """One frame's fp32 latents, 4 channels at an eighth of the side: the encoded clip, or the styled one."""
    return 4 * (size // 8) ** 2 * 4


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """diffusers warns on every meta-device cast that some modules 'should be kept in float32' (none are)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def gib(value: float) -> float:
    return round(value / GIB, 2)


@dataclass
class Outcome:
    setup: Setup
    peak: float
    phase: str
    fix: Options | None = None
    fixed: float = 0.0


def measure(quick: bool, scratch: Path) -> Figure:
    del scratch  # nothing is written: every number comes from shapes
    started = time.perf_counter()
    lab = Lab(quick)
    rows, raw, outcomes = [], [], []
    with quiet():
        for setup in SETUPS:
            outcome = Outcome(setup, *lab.peak(setup, Options(setup.frames)))
            status = verdict(outcome.peak)
            if status == "fits":
                change = f"nothing: {BUDGET_GIB / (1 + MARGIN) - outcome.peak / GIB:.1f} GiB below the fits line"
            else:
                outcome.fix, outcome.fixed = cheapest_fix(lab, setup)
                change = f"{outcome.fix.flags(setup)} → {gib(outcome.fixed)} GiB ({verdict(outcome.fixed)})"
            calls = [frames_per_vae_call(lab, setup, *o) or "none" for o in ((False,), (True,), (True, True))]
            default = lab.default_batch(setup)
            decode = [gib(lab.vae_line(setup, setup.size, True, tiled)[1]) for tiled in (False, True)]
            rows.append([
                setup.name, gib(sum(lab.weights(setup).values())),
                f"{gib(lab.step(setup, setup.frames, True, setup.size).peak.bytes)} "
                f"({gib(lab.step(setup, setup.frames, True, setup.size, True).peak.bytes)} chunked)",
                f"{decode[0]} ({decode[1]} tiled)",
                f"{calls[0]} ({calls[1]} with --cpu-offload, {calls[2]} adding --vae-tiling)",
                f"{gib(outcome.peak)} ({outcome.phase}; {default} frame{'s' * (default > 1)} per VAE call)",
                status, change,
            ])  # fmt: skip
            raw.append(raw_numbers(lab, setup))
            outcomes.append(outcome)
        check = {} if quick else check_on_cpu()
    seconds = time.perf_counter() - started
    headers = [
        "configuration", "weights GiB (UNet+motion, ControlNet, VAE)",
        "activations GiB (one CFG step; with --chunk-feed-forward)",
        "VAE decode GiB per frame", "frames per VAE call that fit",
        "total peak GiB (defaults: --vae-batch 0, the engine's choice)", "vs 12 GB", "what to change",
    ]  # fmt: skip
    return Figure(
        number=7,
        title="GPU memory, on paper",
        question="Will a restyle job fit in my GPU? Expected peak VRAM of one job in fp16 at the model's own "
        "resolution, from exact parameter counts and activation sizes measured on the real architectures, "
        "against the 12 GB NVIDIA card the ComfyUI unsampling workflow recommends.",
        headers=headers,
        rows=rows,
        target=f"peak within a 12 GB card: {BUDGET_GIB:g} GiB after ~{CUDA_CONTEXT_GIB:g} GiB of CUDA context, "
        f"{MARGIN:.0%} of that kept for allocator fragmentation and cuDNN workspaces (fits: ≤ "
        f"{BUDGET_GIB / (1 + MARGIN):.1f} GiB counted; tight: ≤ {BUDGET_GIB:g}; over: more)",
        verdict=summary(lab, outcomes),
        notes=notes(lab, check, seconds),
        raw={"setups": raw, "cpu_check": check, "seconds": round(seconds, 1), "budget_gib": BUDGET_GIB},
    )


def raw_numbers(lab: Lab, setup: Setup) -> dict[str, Any]:
    steps = {key[3:]: tracker for key, tracker in lab.memo.items() if key[:3] == ("step", setup.family, setup.motion)}
    decode, encode = lab.vae_line(setup, setup.size, True), lab.vae_line(setup, setup.size, False)
    tiled_decode, tiled_encode = (lab.vae_line(setup, setup.size, d, True) for d in (True, False))
    offloaded = Options(setup.frames, offload=True)
    return {
        "setup": setup.__dict__,
        "params": lab.models(setup).params,
        "weights_gib": {k: gib(v) for k, v in lab.weights(setup).items()},
        "text_phase_gib": gib(lab.text(setup)),
        "unet_steps": [
            {
                "frames": frames, "controlnet": control, "size": size, "chunked_feed_forward": chunk,
                "peak_gib": gib(t.peak.bytes),
                "peak_in": t.peak.where, "largest_tensor": [gib(t.peak.largest), t.peak.largest_shape],
                "made_by_op_gib": {op: gib(n) for op, n in t.made.most_common(6)},
            }
            for (frames, control, size, chunk), t in steps.items()
        ],
        "default_vae_batch": lab.default_batch(setup),
        "vae_decode_gib": {"fixed": gib(decode[0]), "per_frame": gib(decode[1])},
        "vae_encode_gib": {"fixed": gib(encode[0]), "per_frame": gib(encode[1])},
        "vae_decode_tiled_gib": {"fixed": gib(tiled_decode[0]), "per_frame": gib(tiled_decode[1])},
        "vae_encode_tiled_gib": {"fixed": gib(tiled_encode[0]), "per_frame": gib(tiled_encode[1])},
        f"vae_decode_{CHECK_BATCH}_frames_gib": {
            "measured": gib(lab.decode_at_batch(setup, tiled=False)),
            "tiled": None if lab.quick else gib(lab.decode_at_batch(setup, tiled=True)),
        },
        "clip_latents_mib_per_frame": round(lab.clip_per_frame(setup.size) / 2**20, 3),
        "phases_gib_defaults": {k: gib(v) for k, v in lab.phases(setup, Options(setup.frames)).items()},
        "phases_gib_cpu_offload": {k: gib(v) for k, v in lab.phases(setup, offloaded).items()},
    }  # fmt: skip


def summary(lab: Lab, outcomes: list[Outcome]) -> str:
    parts = []
    for o in outcomes:
        if o.fix is None:
            parts.append(f"{o.setup.name}: {gib(o.peak)} GiB at its peak ({o.phase}), fits")
        else:
            phases = lab.phases(o.setup, Options(o.setup.frames))
            runner_up = max((p for p in phases if p != o.phase), key=phases.__getitem__)
            parts.append(
                f"{o.setup.name}: {gib(o.peak)} GiB ({o.phase}; {runner_up} {gib(phases[runner_up])}), "
                f"{verdict(o.peak)}; fits with {o.fix.flags(o.setup)} ({gib(o.fixed)} GiB)"
            )
    return (
        "On paper, not measured on a GPU. "
        + "; ".join(parts)
        + f". Counted peaks are exact for diffusers' eager ops; the card adds ~{CUDA_CONTEXT_GIB:g} GiB of "
        f"context and typically 5–20% of allocator and cuDNN overhead (taken as {MARGIN:.0%}), so a 'tight' "
        "row may or may not run."
    )


def notes(lab: Lab, check: dict[str, float], seconds: float) -> list[str]:
    sd15, xl8, xl16 = SETUPS[0], SETUPS[1], SETUPS[2]
    params = {**lab.models(sd15).params, **lab.models(xl16).params}
    params |= lab.models(SETUPS[4]).params

    def short(n: float) -> str:
        return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"

    checked = ", ".join(
        f"{name} {params[name]:,} (published ≈{short(known)}, {params[name] / known - 1:+.1%})"
        for name, known in KNOWN_PARAMS.items()
    )
    others = ", ".join(f"{name} {n:,}" for name, n in params.items() if name not in KNOWN_PARAMS)
    step15, step8, step16 = (lab.step(s, s.frames, True, s.size) for s in (sd15, xl8, xl16))
    chunked15, chunked16 = (lab.step(s, s.frames, True, s.size, chunk=True) for s in (sd15, xl16))
    # What one attention matrix would take if materialised (math backend), per layer, fp16.
    matrix15 = 2 * sd15.frames * 8 * (sd15.size // 8) ** 4 * 2
    matrix_xl = 2 * xl16.frames * 10 * (xl16.size // 16) ** 4 * 2
    decode15, decode_xl = lab.vae_line(sd15, sd15.size, True), lab.vae_line(xl16, xl16.size, True)
    encode_xl = lab.vae_line(xl16, xl16.size, False)
    tiled15, tiled_xl = lab.vae_line(sd15, sd15.size, True, True), lab.vae_line(xl16, xl16.size, True, True)
    tiled_encode_xl, fix = lab.vae_line(xl16, xl16.size, False, True), SETUPS[3]
    (n15, side, overlap, work15), (n_xl, _, _, work_xl) = (tiles(lab.models(s).vae, s.size) for s in (sd15, xl16))
    defaults = [lab.default_batch(s) for s in (sd15, xl16, fix)]
    text15, text_xl = lab.text(sd15), lab.text(xl16)
    w_xl = lab.weights(xl16)
    tiled_check = "" if lab.quick else f"; {CHECK_BATCH} frames: {gib(lab.decode_at_batch(xl16, tiled=True))} GiB"
    out = [
        f"Parameters, counted exactly on the meta device from the configs written out in fig7_vram.py: {checked}. "
        "All agree with the published totals to their rounding. "
        f"Also: {others}. Weights are fp16 (2 bytes), SDXL's own VAE fp32 (4 bytes); motion modules' "
        "position tables are buffers and included in the bytes.",
        "Activations are measured, not estimated: the real diffusers 0.42 modules run at full size on the meta "
        "device (shapes, no arithmetic) under a TorchDispatchMode that counts every storage an op creates until "
        "Python frees it (rounded to 512 B blocks as CUDA's caching allocator does), composite ops counted op by "
        "op. The step is the job's own call sequence: CFG batch of 2 × frames, one prompt state per frame, the "
        "window's ControlNet hints cached and repeated, ControlNet residuals held through the UNet call, the "
        "fp32 output and guidance. No extrapolation: every row is measured at its own size and frame count "
        f"(8 → 16 frames multiplies the SDXL step by {step16.peak.bytes / step8.peak.bytes:.3f}).",
        "Attention is counted as PyTorch's fused SDPA kernels (flash, memory-efficient, cuDNN) allocate it on an "
        "NVIDIA GPU: output plus fp32 row statistics, no attention matrix (the VAE's 512-wide single head is "
        "beyond flash's 256 but within the memory-efficient kernel, which has no head-size limit). Where SDPA "
        "falls back to its math path the matrix is materialised: "
        f"{gib(matrix15)} GiB per full-resolution self-attention layer for SD1.5 at 512² × 16 frames, "
        f"{gib(matrix_xl)} GiB for SDXL's 64² level at 16 frames: nothing here would fit.",
        f"Where the step peaks: SD1.5 in {step15.peak.where}, a spatial GEGLU feed-forward at full latent "
        f"resolution (its projection {' × '.join(f'{n:,}' for n in step15.peak.largest_shape)} fp16, "
        f"{gib(step15.peak.largest)} GiB); SDXL in {step16.peak.where}: the motion module's GEGLU at full latent "
        f"resolution, 2·h·w·frames rows × 2·4·320 = {' × '.join(f'{n:,}' for n in step16.peak.largest_shape)} "
        f"fp16, {gib(step16.peak.largest)} GiB, with its GELU and product alive beside it. "
        "--chunk-feed-forward (devices.chunk_feed_forward) runs every feed-forward a frame at a time (spatial "
        "blocks per image, the motion module's along its frames), the same products in slices: the step drops "
        f"to {gib(chunked15.peak.bytes)} GiB for SD1.5 ({chunked15.peak.bytes / step15.peak.bytes - 1:+.0%}) "
        f"and to {gib(chunked16.peak.bytes)} GiB for SDXL at 16 frames "
        f"({chunked16.peak.bytes / step16.peak.bytes - 1:+.0%}), "
        f"whose peak moves to {chunked16.peak.where}.",
        f"VAE, per frame and linear in frames (a call on {CHECK_BATCH} frames measures {CHECK_BATCH}× one: "
        f"{gib(lab.decode_at_batch(xl16, tiled=False))} GiB for SDXL's): decode "
        f"{gib(decode15[1])} GiB at 512² fp16, {gib(decode_xl[1])} GiB at 1024² fp32, "
        f"{gib(lab.vae_line(fix, fix.size, True)[1])} GiB with the fp16-fix VAE (--vae "
        f"madebyollin/sdxl-vae-fp16-fix); encode {gib(encode_xl[1])} GiB "
        "per 1024² fp32 frame. The peak is in the last up block's first ResNet, where the 256-channel full-size "
        "input, its GroupNorm and its SiLU are alive at once. Hence the engine's frames per VAE call at "
        f"--vae-batch 0 (default_vae_batch), which every default row uses: {defaults[0]} for SD1.5, "
        f"{defaults[1]} for SDXL's own VAE in fp32, {defaults[2]} for the fp16-fix one.",
        f"--vae-tiling tiles these sizes too: the engine (tile_vae) lowers diffusers' tile to {side} px, so "
        f"a frame is cut into tiles of {side}² overlapping by {overlap} px, {n15}×{n15} of them at 512² and "
        f"{n_xl}×{n_xl} at 1024² (diffusers steps by three quarters of a tile; the last row and column are "
        "narrower). AutoencoderKL.tiled_decode runs the decoder on one tile after another, keeps every decoded "
        "tile until the last is done, then blends each with its upper and left neighbours and joins them: the "
        "peak is one tile's decoder (in the same ResNet) beside the tiles decoded so far. Measured through that "
        f"very code: {gib(tiled15[1])} GiB per 512² fp16 frame, {gib(tiled_xl[1])} GiB per 1024² fp32 frame "
        f"({tiled_xl[1] / decode_xl[1]:.0%} of the untiled decode{tiled_check}), and {gib(tiled_encode_xl[1])} "
        "GiB to encode one. "
        f"The price: the decoder covers {work15:.2f}× a 512² frame's pixels and {work_xl:.2f}× a 1024² one's, "
        "and tiles decoded apart may leave faint seams the blend does not hide.",
        f"Clip length is not free: the clip's fp32 latents (source, unsampled noise, the sampler's state, the "
        f"window fusion's sums) stay on the GPU, measured on the engine's own samplers at "
        f"{lab.clip_per_frame(sd15.size) / 2**20:.2f} MiB per frame at 512² and "
        f"{lab.clip_per_frame(xl16.size) / 2**20:.2f} MiB at 1024², so a 1,000-frame SDXL clip adds "
        f"{gib(1000 * lab.clip_per_frame(xl16.size))} GiB to the sampling peak (rows assume a one-window clip). "
        f"While frames are encoded, and again while they are decoded, the clip's fp32 latents "
        f"({clip_latent_bytes(sd15.size) / 2**20:.2f} MiB a frame at 512², "
        f"{clip_latent_bytes(xl16.size) / 2**20:.2f} MiB at 1024²) sit beside the VAE, counted there too.",
        f"Text encoders are on the GPU alone, before the rest, with or without --cpu-offload: {gib(text15)} GiB "
        f"for SD1.5, {gib(text_xl)} GiB for SDXL's two, weights included; freed after the prompts; never the peak.",
        "--cpu-offload (Residency.phase, engine/job/devices.py) keeps on the GPU only the models of the phase at hand "
        "and sends them back to the CPU after it: the text encoders for the prompts, the VAE alone while frames "
        "are encoded and decoded, the UNet with its motion module and the ControlNet while sampling. Encoding "
        f"and decoding so lose the UNet's and ControlNet's weights ({gib(w_xl['unet'] + w_xl['controlnet'])} GiB "
        f"for SDXL), sampling only the VAE's ({gib(w_xl['vae'])} GiB in fp32): sampling needs the UNet, the "
        "ControlNet and their activations on the GPU at once, so where it is the peak, offload barely moves it.",
        "Not counted, and why the verdict keeps a margin: the CUDA context (~0.3–0.6 GiB; on Windows the desktop "
        "takes more), the caching allocator's fragmentation between phases (PYTORCH_CUDA_ALLOC_CONF="
        "expandable_segments:True keeps it low), cuDNN convolution workspaces, and scratch inside a few ops "
        "that run as one unit (matmul on non-contiguous inputs).",
    ]
    if check:
        out.append(
            "Check of the counter against the CPU allocator (torch.profiler memory events), on a narrow "
            "SD1.5-shaped motion UNet + ControlNet, one guided step at 128², 4 frames: the counter gives "
            f"{check['cpu_counted_peak_mib']:.1f} MiB on real CPU tensors and {check['meta_counted_peak_mib']:.1f} "
            f"MiB on meta (the same op sequence); outside convolutions the allocator saw "
            f"{check['allocated_outside_convolutions_mib']:.1f} MiB allocated to the counter's "
            f"{check['counted_outside_convolutions_mib']:.1f}. Convolutions allocated "
            f"{check['allocated_in_convolutions_mib']:.1f} MiB for {check['counted_convolution_outputs_mib']:.1f} "
            "MiB of outputs: oneDNN's scratch, the CPU's counterpart of cuDNN's workspace, which lifts the "
            f"CPU allocator's peak to {check['cpu_allocator_peak_mib']:.1f} MiB."
        )
    else:
        out.append(
            f"Quick mode: the check against the CPU allocator and the tiled decodes of {CHECK_BATCH} frames are "
            "skipped; every other number is the same."
        )
    out.append(f"Measured in {seconds:.0f} s on the CPU; nothing is downloaded or allocated at full size.")
    return out
