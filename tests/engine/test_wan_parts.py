"""Wan's parts on a tiny Wan 2.1 folder built with the real classes: diffusers' WanPipeline loads the
folder as it is, our prompt encoding equals the pipeline's, and clips of any length go through the
causal VAE and come back at their own length."""

import pytest
import torch

from blender_unsample.engine.job.latent_time import latent_frames
from blender_unsample.engine.job.prompts import encode_t5_prompt
from blender_unsample.engine.job.video_vae import decode_video, encode_video, temporal_stride
from blender_unsample.engine.tiny_models import build_tiny_wan


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    from diffusers import WanPipeline

    pipeline = WanPipeline.from_pretrained(build_tiny_wan(tmp_path_factory.mktemp("tiny_wan")))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_the_tiny_folder_runs_in_diffusers_own_wan_pipeline(wan):
    frames = wan("a harbour", num_frames=5, height=32, width=32, num_inference_steps=2, output_type="pt").frames
    assert frames.shape == (1, 5, 3, 32, 32) and torch.isfinite(frames).all()


PROMPTS = ["a watercolor of a harbour", "  ink &amp; wash,\n\tboats  ", "", "港口の水彩画 — été"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompts_encode_as_the_wan_pipeline_encodes_them(prompt, wan):
    cpu = torch.device("cpu")
    with torch.no_grad():
        ours = encode_t5_prompt(wan.tokenizer, wan.text_encoder, prompt, cpu, max_tokens=64)
        theirs, _ = wan.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=64, device=cpu)
    assert ours.embeds.shape == (1, 64, 32)
    torch.testing.assert_close(ours.embeds, theirs.to(torch.float32), rtol=0, atol=0)
    used = len(wan.tokenizer(" ".join(prompt.replace("&amp;", "&").split())).input_ids)  # with its </s>
    assert (ours.embeds[0, used:] == 0).all() and (ours.embeds[0, :used].abs().sum(-1) > 0).all()


def test_a_prompt_longer_than_the_encoder_takes_is_cut_with_a_warning(wan):
    said = []
    encode_t5_prompt(wan.tokenizer, wan.text_encoder, "boats " * 40, torch.device("cpu"), 16, said.append)
    assert len(said) == 1 and "takes 16" in said[0]


@pytest.mark.parametrize("frames", [1, 2, 5, 6])
def test_clips_of_any_length_come_back_at_their_own_length(frames, wan):
    video = torch.rand(1, 3, frames, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = encode_video(wan.vae, video)
        back = decode_video(wan.vae, latents, frames)
    assert latents.shape == (1, 16, latent_frames(frames, temporal_stride(wan.vae)), 4, 4)
    assert back.shape == video.shape


def test_latents_are_normalised_by_the_vae_s_own_statistics(wan):
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    config = wan.vae.config
    with torch.no_grad():
        raw = wan.vae.encode(video).latent_dist.mode()
        ours = encode_video(wan.vae, video)
        decoded = wan.vae.decode(raw).sample
        back = decode_video(wan.vae, ours, 5)
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    assert float(mean.abs().max()) > 0.1 and float((std - 1).abs().max()) > 0.1  # the check is not empty
    torch.testing.assert_close(ours, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back, decoded, rtol=1e-4, atol=1e-4)  # the normalisation is undone exactly
