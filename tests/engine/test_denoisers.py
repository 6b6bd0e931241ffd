"""The diffusers UNet wrapper: the k-diffusion contract, CFG batching, real tiny UNets."""

import pytest
import torch
from diffusers import EulerDiscreteScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPTextModel, CLIPTokenizer

from blender_unsample.engine.method import schedules
from blender_unsample.engine.method.denoisers import Conditioning, Guidance, UNetDenoiser
from blender_unsample.engine.method.unsampling import resample, unsample
from blender_unsample.engine.models.families.sd15 import SD15


@pytest.fixture(scope="module")
def scheduler(tiny_models):
    return EulerDiscreteScheduler.from_pretrained(tiny_models.checkpoint, subfolder="scheduler")


@pytest.fixture(scope="module")
def image_unet(tiny_models):
    return UNet2DConditionModel.from_pretrained(tiny_models.checkpoint, subfolder="unet").eval()


@pytest.fixture(scope="module")
def motion_unet(tiny_models, image_unet):
    adapter = MotionAdapter.from_pretrained(tiny_models.motion_adapter)
    return UNetMotionModel.from_unet2d(image_unet, adapter).eval()


@pytest.fixture(scope="module")
def encode(tiny_models):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_models.checkpoint, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(tiny_models.checkpoint, subfolder="text_encoder").eval()

    def encode(prompt: str) -> Conditioning:
        ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.inference_mode():
            return Conditioning(text_encoder(ids)[0])

    return encode


class KnownPrediction(torch.nn.Module):
    """A stand-in UNet that returns the exact eps or v for a known clean sample."""

    def __init__(self, x0: torch.Tensor, eps: torch.Tensor, sigma: float, kind: str) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()))
        self.x0, self.eps, self.sigma, self.kind = x0, eps, sigma, kind
        self.inputs: list[tuple[torch.Tensor, float]] = []

    @property
    def dtype(self):
        return self.anchor.dtype

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, return_dict=False):
        self.inputs.append((sample, float(timestep)))
        alpha = 1 / (1 + self.sigma**2) ** 0.5
        if self.kind == "epsilon":
            return (self.eps,)
        return (alpha * self.eps - self.sigma * alpha * self.x0,)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_denoised_is_the_clean_sample_when_the_prediction_is_exact(scheduler, kind):
    sigma = 2.7
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    fake = KnownPrediction(x0, eps, sigma, kind)
    model = UNetDenoiser(fake, scheduler.alphas_cumprod, kind)
    x = x0 + sigma * eps
    denoised = model(x, sigma, guidance=Guidance(Conditioning(torch.zeros(1, 77, 32))))
    torch.testing.assert_close(denoised, x0, rtol=1e-5, atol=1e-5)
    # The UNet sees the variance-preserving input x / sqrt(sigma^2 + 1) at the matching timestep.
    sample, timestep = fake.inputs[0]
    torch.testing.assert_close(sample, x / (sigma**2 + 1) ** 0.5)
    assert float(model.sigmas[round(timestep)]) == pytest.approx(sigma, rel=0.01)


def test_training_sigmas_map_back_to_their_timesteps(scheduler, image_unet):
    model = UNetDenoiser.from_scheduler(image_unet, scheduler)
    assert model.sigma_min == pytest.approx(0.0292, abs=1e-4)
    assert model.sigma_max == pytest.approx(14.6146, abs=1e-4)
    for t in (0, 1, 250, 999):
        assert model.sigma_to_timestep(float(model.sigmas[t])) == pytest.approx(t, abs=1e-6)
    assert model.sigma_to_timestep(1e-4) == 0  # below the training range: clamped


def test_unknown_prediction_type_is_refused(scheduler, image_unet):
    with pytest.raises(ValueError, match="sample"):
        UNetDenoiser(image_unet, scheduler.alphas_cumprod, "sample")


def batch_sizes_seen(unet):
    sizes = []
    handle = unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes, handle


def test_cfg_batches_cond_and_uncond_and_skips_uncond_at_scale_one(scheduler, image_unet, encode):
    model = UNetDenoiser.from_scheduler(image_unet, scheduler)
    cond, uncond = encode("a watercolor painting"), encode("")
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sizes, handle = batch_sizes_seen(image_unet)
    try:
        guided = model(x, 3.0, guidance=Guidance(cond, uncond, 4.0))
        plain = model(x, 3.0, guidance=Guidance(cond, uncond, 1.0))
        only_uncond = model(x, 3.0, guidance=Guidance(uncond))
    finally:
        handle.remove()
    assert sizes == [6, 3, 3]  # cond and uncond in one batch; cfg 1 makes no uncond pass
    torch.testing.assert_close(guided, only_uncond + 4.0 * (plain - only_uncond), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain, only_uncond), "the prompt must change the prediction"


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_motion_unet_round_trip_runs_and_is_bit_deterministic(scheduler, motion_unet, encode, sampler):
    model = UNetDenoiser.from_scheduler(motion_unet, scheduler)
    guidance = Guidance(encode("a city street at night"), encode(""), 2.0)
    latents = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(3))
    sigmas = schedules.ays(4, SD15.ays_sigmas)

    def round_trip():
        noise = unsample(model, latents, sigmas, sampler=sampler, extra_args={"guidance": guidance})
        return noise, resample(model, noise, sigmas, sampler=sampler, extra_args={"guidance": guidance})

    noise, back = round_trip()
    noise_again, back_again = round_trip()
    assert noise.shape == back.shape == latents.shape
    assert torch.isfinite(back).all()
    assert float(noise.std()) > 2 * float(latents.std()), "unsampling must end far up the noise scale"
    assert torch.equal(noise, noise_again) and torch.equal(back, back_again)
    assert model.calls == 2 * 2 * len(sigmas[:-1])


def test_motion_unet_prompt_changes_the_result(scheduler, motion_unet, encode):
    model = UNetDenoiser.from_scheduler(motion_unet, scheduler)
    latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    sigmas = schedules.ays(3, SD15.ays_sigmas)
    source = Guidance(encode("a photo"))
    noise = unsample(model, latents, sigmas, extra_args={"guidance": source})
    same = resample(model, noise, sigmas, extra_args={"guidance": source})
    styled = resample(model, noise, sigmas, extra_args={"guidance": Guidance(encode("an oil painting"))})
    assert not torch.allclose(same, styled, atol=1e-3)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "flow"])
def test_each_parameterisation_gives_back_the_clean_sample_from_an_exact_prediction(kind):
    from blender_unsample.engine.method.denoisers import PARAMETERISATIONS

    x0, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    sigma = 0.35 if kind == "flow" else 2.7
    if kind == "flow":  # rectified flow: x = (1 - t) x0 + t eps, velocity eps - x0
        x, output = (1 - sigma) * x0 + sigma * eps, eps - x0
    else:
        x = x0 + sigma * eps
        alpha = 1 / (1 + sigma**2) ** 0.5
        output = eps if kind == "epsilon" else alpha * eps - sigma * alpha * x0
    torch.testing.assert_close(PARAMETERISATIONS[kind].denoised(x, sigma, output), x0)


def test_an_euler_step_of_the_samplers_follows_a_flow_models_velocity_exactly():
    """The samplers stay family-blind: on a flow model their step (x - denoised) / sigma is the velocity."""
    from blender_unsample.engine.method.denoisers import PARAMETERISATIONS

    x0, eps = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    t, t_next = 0.8, 0.5
    x = (1 - t) * x0 + t * eps
    denoised = PARAMETERISATIONS["flow"].denoised(x, t, eps - x0)
    stepped = x + (t_next - t) * (x - denoised) / t
    torch.testing.assert_close(stepped, (1 - t_next) * x0 + t_next * eps)
