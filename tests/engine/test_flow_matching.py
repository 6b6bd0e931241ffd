"""The method on flow-matching models (Wan): the shifted schedule, Euler as diffusers' flow-matching
scheduler steps, and the round trip on an exact flow video model."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from flow_video import FlowVideo, diffusers_flow_scheduler
from gaussian_video import GaussianVideo

from blender_unsample.engine.method import schedules
from blender_unsample.engine.method.denoisers import PARAMETERISATIONS, Conditioning, FlowTransformerDenoiser, Guidance
from blender_unsample.engine.method.samplers import sample_euler
from blender_unsample.engine.method.unsampling import resample, unsample
from blender_unsample.engine.tiny_models import tiny_wan_transformer


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("steps", [1, 4, 30])
def test_the_flow_schedule_is_diffusers_shifted_schedule(shift, steps):
    ours = schedules.flow(steps, shift)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, steps + 1)[:-1].tolist())
    assert len(ours) == steps + 1 and ours[0] == 1.0 and ours[-1] == 0.0
    torch.testing.assert_close(ours.float(), scheduler.sigmas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours[:-1].float() * 1000, scheduler.timesteps, rtol=1e-6, atol=1e-4)


def test_a_larger_shift_spends_more_steps_near_the_noise():
    assert (schedules.flow(10, 5.0)[1:-1] > schedules.flow(10, 3.0)[1:-1]).all()
    with pytest.raises(ValueError, match="shift"):
        schedules.flow(10, 0.0)


def test_euler_with_a_velocity_model_steps_as_diffusers_flow_scheduler():
    torch.manual_seed(0)
    weight = torch.randn(4, 4) / 4

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:  # any smooth model will do
        return torch.einsum("ij,bj...->bi...", weight, x) * (1 + sigma) + torch.sin(x)

    flow = PARAMETERISATIONS["flow"]

    def denoiser(x, sigma, **_):
        return flow.denoised(x, sigma, velocity(flow.model_input(x, sigma), sigma))

    noise = torch.randn(2, 4, 3, 5, 5)
    sigmas = schedules.flow(12, 3.0)
    ours = sample_euler(denoiser, noise.clone(), sigmas)

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, 13)[:-1].tolist())
    theirs = noise.clone()
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas[:-1], strict=True):
        theirs = scheduler.step(velocity(theirs, float(sigma)), t, theirs).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def round_trip_error(model, clips, steps: int, refine: int) -> float:
    sigmas = schedules.flow(steps, 3.0)
    noise = unsample(model, clips, sigmas, refine=refine)
    back = resample(model, noise, sigmas)
    return float((back - clips).pow(2).mean().sqrt())


def test_unsampling_an_exact_flow_model_comes_back_and_refinement_closes_the_gap():
    model = FlowVideo(GaussianVideo(8, 3.0, channels=2, size=4))
    clips = model.sample(4, seed=5)
    errors = {(n, r): round_trip_error(model, clips, n, r) for n in (8, 16) for r in (0, 1, 2)}
    spread = float(clips.std())
    for steps in (8, 16):
        assert errors[(steps, 0)] < 0.5 * spread, errors
        assert errors[(steps, 1)] < 0.5 * errors[(steps, 0)], errors  # one refinement at least halves it
        assert errors[(steps, 2)] <= errors[(steps, 1)] * 1.01, errors
    assert errors[(16, 0)] < errors[(8, 0)], errors


def test_the_unsampled_noise_of_an_exact_flow_model_approaches_the_noise_s_spread():
    # The flow ODE carries the data to N(0, I) exactly; Euler's steps get there as they shrink. This
    # Gaussian's weakest directions (variance ~0.01) make the ODE stiff near sigma 0, so it takes many.
    model = FlowVideo(GaussianVideo(8, 3.0, channels=2, size=4))
    clips = model.sample(64, seed=6)
    gaps = [abs(float(unsample(model, clips, schedules.flow(steps), refine=2).std()) - 1) for steps in (32, 128, 512)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02, gaps
    noise = unsample(model, clips, schedules.flow(128), refine=2)
    # ... and is not the clip: at sigma 1 the sample is all noise.
    assert float(torch.nn.functional.cosine_similarity(noise.flatten(), clips.flatten(), dim=0)) < 0.9


# --- the model call: diffusers' Wan transformer ------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 3.5])
def test_resampling_a_wan_transformer_matches_diffusers_wan_pipeline(scale):
    from diffusers import WanPipeline

    torch.manual_seed(0)
    transformer = tiny_wan_transformer()
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 16, 3, 8, 8, generator=generator)  # 3 latent frames: a 9-frame, 64 px clip
    prompt, negative = torch.randn(2, 1, 10, 32, generator=generator).unbind(0)
    steps, shift = 6, 3.0
    sigmas = schedules.flow(steps, shift)

    guidance = Guidance(Conditioning(prompt), Conditioning(negative), scale)
    denoiser = FlowTransformerDenoiser(transformer)
    with torch.no_grad():
        ours = resample(denoiser, noise.clone(), sigmas, extra_args={"guidance": guidance})

    scheduler = diffusers_flow_scheduler(steps, shift)
    pipeline = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        prompt_embeds=prompt,
        negative_prompt_embeds=negative,
        latents=noise.clone(),
        num_frames=9,
        height=64,
        width=64,
        num_inference_steps=steps,
        guidance_scale=scale,
        output_type="latent",
    ).frames

    assert denoiser.calls == steps  # cond and uncond in one batch: one call a step
    assert float((ours - noise).abs().max()) > 0.1, "the transformer did nothing: the check would be empty"
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_context_windows_in_latent_time_stay_near_the_whole_clip_answer():
    # Wan's windows count latent frames (4 source frames each); a flow model's round trip through them
    # keeps to the whole clip's as figure 8 finds for SD's (within 0.045 of the spread there).
    from blender_unsample.engine.method.context_windows import ContextWindowDenoiser, context_windows

    model = FlowVideo(GaussianVideo(16, 4.0, channels=2, size=4))
    clips = model.sample(4, seed=7)
    sigmas = schedules.flow(16, 3.0)
    whole = resample(model, unsample(model, clips, sigmas, refine=1), sigmas)
    windowed_model = ContextWindowDenoiser(model, context_windows(16, 8, 2), "pyramid")
    windowed = resample(windowed_model, unsample(windowed_model, clips, sigmas, refine=1), sigmas)
    gap = float((windowed - whole).pow(2).mean().sqrt()) / float(clips.std())
    assert 0 < gap < 0.045, gap


def test_wan_2_2_s_two_experts_switch_at_the_boundary_as_in_diffusers_wan_pipeline():
    from diffusers import WanPipeline

    torch.manual_seed(0)
    high, low = tiny_wan_transformer(), tiny_wan_transformer()
    generator = torch.Generator().manual_seed(4)
    noise = torch.randn(1, 16, 3, 8, 8, generator=generator)
    prompt, negative = torch.randn(2, 1, 10, 32, generator=generator).unbind(0)
    steps, shift, boundary = 6, 3.0, 0.875  # Wan 2.2 A14B's own boundary

    denoiser = FlowTransformerDenoiser(high, low_noise=low, boundary=boundary, low_noise_cfg=2.0)
    guidance = Guidance(Conditioning(prompt), Conditioning(negative), 3.5)
    with torch.no_grad():
        ours = resample(denoiser, noise.clone(), schedules.flow(steps, shift), extra_args={"guidance": guidance})
    pipeline = WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, scheduler=diffusers_flow_scheduler(steps, shift),
        transformer=high, transformer_2=low, boundary_ratio=boundary,
    )  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        prompt_embeds=prompt, negative_prompt_embeds=negative, latents=noise.clone(), num_frames=9, height=64,
        width=64, num_inference_steps=steps, guidance_scale=3.5, guidance_scale_2=2.0, output_type="latent",
    ).frames  # fmt: skip

    sigmas = schedules.flow(steps, shift)[:-1]
    assert (sigmas >= boundary).any() and (sigmas < boundary).any(), "both experts must take part"
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        only_high = resample(FlowTransformerDenoiser(high), noise.clone(), schedules.flow(steps, shift),
                             extra_args={"guidance": guidance})  # fmt: skip
    assert float((ours - only_high).abs().max()) > 1e-3, "the second expert changed nothing"
    with pytest.raises(ValueError, match="boundary"):
        FlowTransformerDenoiser(high, boundary=boundary)


def test_wan_2_2_ti2v_with_per_token_timesteps_matches_diffusers_wan_pipeline():
    # Wan 2.2 TI2V 5B's pipeline gives its transformer one timestep per token (expand_timesteps); for a
    # clip restyled as a whole every token has the same one, which our single timestep equals.
    from diffusers import WanPipeline

    torch.manual_seed(0)
    transformer = tiny_wan_transformer(in_channels=48, out_channels=48)  # TI2V's 48-channel latents
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(1, 48, 3, 8, 8, generator=generator)
    prompt, negative = torch.randn(2, 1, 10, 32, generator=generator).unbind(0)
    guidance = Guidance(Conditioning(prompt), Conditioning(negative), 3.0)
    with torch.no_grad():
        ours = resample(FlowTransformerDenoiser(transformer), noise.clone(), schedules.flow(5, 5.0),
                        extra_args={"guidance": guidance})  # fmt: skip
    pipeline = WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, scheduler=diffusers_flow_scheduler(5, 5.0),
        transformer=transformer, expand_timesteps=True,
    )  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        prompt_embeds=prompt, negative_prompt_embeds=negative, latents=noise.clone(), num_frames=9, height=64,
        width=64, num_inference_steps=5, guidance_scale=3.0, output_type="latent",
    ).frames  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
