"""Turn a diffusion model into a k-diffusion style denoiser with classifier-free guidance.

Two parts, kept apart: the *parameterisation* says what the model predicts and how that becomes the
denoised sample (epsilon, v, or a flow-matching velocity), the *model call* (UNetDenoiser for SD 1.5
and SDXL, FlowTransformerDenoiser for Wan; both share GuidedDenoiser's guidance and batching) runs the
network. The samplers see only ``denoised``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

Added = dict[str, Tensor] | None  # SDXL's pooled text and size conditioning, batched


class Parameterisation:
    """What a model predicts, and how its output becomes the denoised sample at noise level sigma.

    ``x`` is the sampler's sample on its own scale; the model is given ``model_input(x, sigma)``.
    """

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        raise NotImplementedError

    def denoised(self, x: torch.Tensor, sigma: float, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EpsilonPrediction(Parameterisation):
    """The noise, on the variance-exploding scale x = x0 + sigma * eps; the model sees the
    variance-preserving x / sqrt(sigma^2 + 1) (SD 1.5, SDXL)."""

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x / (sigma**2 + 1) ** 0.5

    def denoised(self, x: torch.Tensor, sigma: float, output: torch.Tensor) -> torch.Tensor:
        return x - sigma * output


class VPrediction(EpsilonPrediction):
    """v = alpha * eps - sigma_vp * x0 on the variance-preserving scale (SD 2.x 768, some fine-tunes):
    x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)."""

    def denoised(self, x: torch.Tensor, sigma: float, output: torch.Tensor) -> torch.Tensor:
        return x / (sigma**2 + 1) - output * (sigma / (sigma**2 + 1) ** 0.5)


class FlowPrediction(Parameterisation):
    """A flow-matching velocity v = eps - x0 with x = (1 - sigma) * x0 + sigma * eps and sigma in
    [0, 1] (rectified flow: Wan, SD3, FLUX): x0 = x - sigma * v, and the model sees x as it is. The
    samplers' step (x - denoised) / sigma is then exactly v, so they need no change."""

    def model_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x

    def denoised(self, x: torch.Tensor, sigma: float, output: torch.Tensor) -> torch.Tensor:
        return x - sigma * output


# By the name diffusers' schedulers give it (config.prediction_type), "flow" for flow matching.
PARAMETERISATIONS: dict[str, Parameterisation] = {
    "epsilon": EpsilonPrediction(),
    "v_prediction": VPrediction(),
    "flow": FlowPrediction(),
}
# What the UNet model call takes: its timesteps are the discrete training ones of a DDPM schedule.
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class Conditioning:
    """An encoded prompt: cross-attention states, and for SDXL the pooled/size conditioning."""

    embeds: torch.Tensor  # (1, tokens, dim)
    added: dict[str, torch.Tensor] | None = None  # SDXL: {"text_embeds": (1, 1280), "time_ids": (1, 6)}


@dataclass(frozen=True)
class Guidance:
    """What one sampling pass conditions on: a prompt, an optional negative one, and CFG scale."""

    cond: Conditioning
    uncond: Conditioning | None = None
    scale: float = 1.0


def training_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Sigmas of the discrete training timesteps, on the variance-exploding scale."""
    alphas_cumprod = alphas_cumprod.to(torch.float64)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


class GuidedDenoiser:
    """What every model call shares: classifier-free guidance with cond and uncond in one batch, the
    prompt states batched once per pass, the model's dtype for its input only (the sampler's x stays
    float32), and a count of model calls. Subclasses say how the network is called."""

    def __init__(self, model: Any, parameterisation: Parameterisation) -> None:
        self.model = model
        # diffusers computes a model's dtype by walking its modules: read it once, not per call.
        self.dtype = model.dtype
        self.parameterisation = parameterisation
        self.calls = 0  # forward passes made (a CFG batch of two counts as one)
        # The prompt states batched for the model, kept while the same guidance and batch shape
        # come back: every step and window of a pass would otherwise copy them anew.
        self._batched: tuple[tuple[Any, ...], torch.Tensor, dict[str, torch.Tensor] | None] | None = None

    def _forward(
        self, x: Tensor, timestep: Tensor, embeds: Tensor, added: Added, kwargs: dict[str, Any], sigma: float
    ) -> Tensor:
        """One forward pass: ``x`` is the model's input (the CFG batch), ``added`` SDXL's extra conditioning."""
        raise NotImplementedError

    def _guidance_scale(self, guidance: Guidance, sigma: float) -> float:
        return guidance.scale

    def _timestep(self, sigma: float, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def _denoise(
        self, x: torch.Tensor, sigma: float, guidance: Guidance, prompts_per_part: int, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        batch = x.shape[0]
        scale = self._guidance_scale(guidance, sigma)
        parts = [guidance.cond]
        if guidance.uncond is not None and scale != 1.0:  # at scale 1 the uncond term cancels out exactly
            parts.insert(0, guidance.uncond)
        model_input = self.parameterisation.model_input(x, sigma).to(self.dtype)
        if len(parts) == 2:
            model_input = torch.cat([model_input, model_input])
        embeds, added = self._conditioning(guidance, parts, prompts_per_part, batch, model_input.device)
        output = self._forward(model_input, self._timestep(sigma, model_input.device), embeds, added, kwargs, sigma)
        self.calls += 1

        denoised = self.parameterisation.denoised(x, sigma, output.to(x.dtype).reshape(len(parts), *x.shape))
        if len(parts) == 1:
            return denoised[0]
        uncond, cond = denoised.unbind(0)
        # Guidance on denoised equals guidance on the model's output: denoised is affine in it.
        return torch.lerp(uncond, cond, scale)

    def _conditioning(
        self, guidance: Guidance, parts: list[Conditioning], prompts_per_part: int, batch: int, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        key = (guidance, len(parts), prompts_per_part, batch, device)
        if self._batched is None or not _same_key(self._batched[0], key):
            embeds = torch.cat([p.embeds.expand(prompts_per_part, -1, -1) for p in parts]).to(device, self.dtype)
            self._batched = (key, embeds, _batched_added_conditioning(parts, batch, device, self.dtype))
        return self._batched[1], self._batched[2]


class UNetDenoiser(GuidedDenoiser):
    """``denoised = self(x, sigma, guidance=...)`` over an eps- or v-predicting diffusers UNet.

    Works for image UNets (x is B, C, H, W) and motion UNets (x is B, C, F, H, W).
    """

    def __init__(
        self,
        unet: Any,
        alphas_cumprod: torch.Tensor,
        prediction_type: str = "epsilon",
        frames_in_batch: bool = False,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction type {prediction_type!r}; use one of {PREDICTION_TYPES}")
        super().__init__(unet, PARAMETERISATIONS[prediction_type])
        # An image UNet given video (B, C, F, H, W) denoises each frame on its own, as a batch.
        self.frames_in_batch = frames_in_batch
        self.prediction_type = prediction_type
        self.sigmas = training_sigmas(alphas_cumprod)
        self._log_sigmas = np.log(self.sigmas.numpy())

    @property
    def unet(self) -> Any:
        return self.model

    @classmethod
    def from_scheduler(cls, unet: Any, scheduler: Any, frames_in_batch: bool = False) -> UNetDenoiser:
        """Build from any diffusers scheduler: it knows the training betas and prediction type."""
        return cls(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type, frames_in_batch)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_timestep(self, sigma: float) -> float:
        """The fractional training timestep whose sigma is ``sigma`` (log-sigma interpolation)."""
        return float(np.interp(np.log(sigma), self._log_sigmas, np.arange(len(self._log_sigmas))))

    def __call__(self, x: torch.Tensor, sigma: float, guidance: Guidance, **unet_kwargs: Any) -> torch.Tensor:
        if x.ndim == 5 and self.frames_in_batch:
            b, c, f, h, w = x.shape
            images = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
            denoised = self._denoise(images, sigma, guidance, b * f, unet_kwargs)
            return denoised.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
        # Motion UNets attend to the prompt once per frame: they take B * F prompt states.
        prompts_per_part = x.shape[0] * x.shape[2] if x.ndim == 5 else x.shape[0]
        return self._denoise(x, sigma, guidance, prompts_per_part, unet_kwargs)

    def _timestep(self, sigma: float, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.sigma_to_timestep(sigma), dtype=torch.float32, device=device)

    def _forward(
        self, x: Tensor, timestep: Tensor, embeds: Tensor, added: Added, kwargs: dict[str, Any], sigma: float
    ) -> Tensor:
        return self.model(
            x, timestep, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False, **kwargs
        )[0]


class FlowTransformerDenoiser(GuidedDenoiser):
    """``denoised = self(x, sigma, guidance=...)`` over a flow-matching video transformer (diffusers'
    ``WanTransformer3DModel``, or ``WanVACETransformer3DModel`` with ``control``): x is (B, C, F, H, W)
    latents, sigma in [0, 1], and the model is given x as it is at timestep ``num_train_timesteps *
    sigma``, as diffusers' flow-matching schedulers give it. The prompt is attended to once per clip.

    ``control`` is VACE's conditioning, ``(states, scale)``: states (1, C, F, H, W) over the whole
    clip, of which each context window gets its own frames; scale one weight per VACE layer.
    ``low_noise`` is Wan 2.2 A14B's second expert: it takes over below sigma ``boundary``, with its
    own CFG scale ``low_noise_cfg`` if given, as diffusers' WanPipeline switches them."""

    sigma_min = 0.0
    sigma_max = 1.0

    def __init__(
        self,
        transformer: Any,
        num_train_timesteps: int = 1000,
        control: tuple[Tensor, Tensor] | None = None,
        low_noise: Any = None,
        boundary: float | None = None,
        low_noise_cfg: float | None = None,
    ) -> None:
        super().__init__(transformer, PARAMETERISATIONS["flow"])
        if (low_noise is None) != (boundary is None):
            raise ValueError("a second expert needs its boundary, and a boundary its second expert")
        self.num_train_timesteps = num_train_timesteps
        self.control = control
        self.low_noise, self.boundary, self.low_noise_cfg = low_noise, boundary, low_noise_cfg
        self._frames: Any = None

    def __call__(
        self, x: torch.Tensor, sigma: float, guidance: Guidance, frames: Any = None, **kwargs: Any
    ) -> torch.Tensor:
        self._frames = frames  # a context window's indices: which frames of the control it gets
        return self._denoise(x, sigma, guidance, x.shape[0], kwargs)

    def _in_low_noise(self, sigma: float) -> bool:
        return self.boundary is not None and sigma < self.boundary

    def _guidance_scale(self, guidance: Guidance, sigma: float) -> float:
        if self.low_noise_cfg is not None and self._in_low_noise(sigma):
            return self.low_noise_cfg
        return guidance.scale

    def _timestep(self, sigma: float, device: torch.device) -> torch.Tensor:
        return torch.tensor([self.num_train_timesteps * sigma], dtype=torch.float32, device=device)

    def _forward(
        self, x: Tensor, timestep: Tensor, embeds: Tensor, added: Added, kwargs: dict[str, Any], sigma: float
    ) -> Tensor:
        if self.control is not None:
            states, scale = self.control
            if self._frames is not None:
                states = states[:, :, list(self._frames)]
            kwargs = {
                **kwargs,
                "control_hidden_states": states.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1, -1),
                "control_hidden_states_scale": scale.to(x.device),
            }
        model = self.low_noise if self._in_low_noise(sigma) else self.model
        return model(
            hidden_states=x,
            timestep=timestep.expand(x.shape[0]),
            encoder_hidden_states=embeds,
            return_dict=False,
            **kwargs,
        )[0]


def _same_key(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    # The guidance by identity (its tensors cannot be compared cheaply), the rest by value.
    return a[0] is b[0] and a[1:] == b[1:]


def _batched_added_conditioning(
    parts: list[Conditioning], batch: int, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor] | None:
    added = [p.added for p in parts]
    if any(a is None for a in added):
        return None
    return {key: torch.cat([a[key].expand(batch, -1) for a in added]).to(device, dtype) for key in added[0]}
