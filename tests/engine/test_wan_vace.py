"""VACE's weak control: our resample with the control clip's conditioning equals diffusers'
WanVACEPipeline given the same control video, prompt states, noise and sigmas."""

import numpy as np
import pytest
import torch
from flow_video import diffusers_flow_scheduler
from PIL import Image

from blender_unsample.engine.job.vace import vace_control
from blender_unsample.engine.method import schedules
from blender_unsample.engine.method.context_windows import ContextWindowDenoiser
from blender_unsample.engine.method.denoisers import Conditioning, FlowTransformerDenoiser, Guidance
from blender_unsample.engine.method.unsampling import resample
from blender_unsample.engine.tiny_models import tiny_wan_transformer, tiny_wan_vae

STEPS, SHIFT, FRAMES, SIZE = 4, 3.0, 9, 64


def tiny_vace():
    torch.manual_seed(0)
    return tiny_wan_transformer(num_layers=3, vace_layers=[0, 2], vace_in_channels=96), tiny_wan_vae()


def control_frames() -> list[Image.Image]:
    generator = np.random.default_rng(3)
    return [Image.fromarray(generator.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(FRAMES)]


def as_video(frames: list[Image.Image]) -> torch.Tensor:
    """(1, 3, F, H, W) in [-1, 1], as diffusers' video processor makes it from PIL frames."""
    pixels = np.stack([np.asarray(frame, dtype=np.float32) / 255 for frame in frames])  # F, H, W, 3
    return torch.from_numpy(pixels).permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_resampling_with_vace_control_matches_diffusers_wan_vace_pipeline(strength):
    from diffusers import WanVACEPipeline

    transformer, vae = tiny_vace()
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 16, 3, SIZE // 8, SIZE // 8, generator=generator)
    prompt, negative = torch.randn(2, 1, 10, 32, generator=generator).unbind(0)
    frames = control_frames()
    with torch.no_grad():
        control = vace_control(vae, as_video(frames), transformer, strength)
        denoiser = FlowTransformerDenoiser(transformer, control=control)
        guidance = Guidance(Conditioning(prompt), Conditioning(negative), 3.0)
        ours = resample(denoiser, noise.clone(), schedules.flow(STEPS, SHIFT), extra_args={"guidance": guidance})

    scheduler = diffusers_flow_scheduler(STEPS, SHIFT)
    pipeline = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer)
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        video=frames, prompt_embeds=prompt, negative_prompt_embeds=negative, latents=noise.clone(),
        num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=3.0,
        conditioning_scale=strength, output_type="latent",
    ).frames  # fmt: skip

    assert control[0].shape == (1, 96, 3, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_the_control_steers_and_each_window_gets_its_own_frames():
    transformer, vae = tiny_vace()
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(1, 16, 3, SIZE // 8, SIZE // 8, generator=generator)
    prompt = torch.randn(1, 10, 32, generator=generator)
    guidance = Guidance(Conditioning(prompt))
    with torch.no_grad():
        control = vace_control(vae, as_video(control_frames()), transformer, 1.0)
        weak = vace_control(vae, as_video(control_frames()), transformer, 0.0)
        steered = FlowTransformerDenoiser(transformer, control=control)(noise, 0.5, guidance)
        free = FlowTransformerDenoiser(transformer, control=weak)(noise, 0.5, guidance)
        # One window over frames (2, 0): the control's frames 2 and 0, in that order.
        window = ContextWindowDenoiser(FlowTransformerDenoiser(transformer, control=control), [[2, 0]], "flat")
        part = window(noise, 0.5, guidance=guidance)[:, :, [2, 0]]  # frame 1 is in no window
        alone = FlowTransformerDenoiser(transformer, control=(control[0][:, :, [2, 0]], control[1]))
        direct = alone(noise[:, :, [2, 0]], 0.5, guidance)
    assert float((steered - free).abs().max()) > 1e-3, "the control changed nothing"
    torch.testing.assert_close(part, direct)
