"""Any strip length through Wan's causal VAE (4x in time): padded to 4k + 1, cut back after."""

import pytest
import torch

from blender_unsample.engine.job.latent_time import causal_length, latent_frames, pad_frames, trim_frames
from blender_unsample.engine.tiny_models import tiny_wan_vae


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return tiny_wan_vae()


@pytest.mark.parametrize(
    ("frames", "padded", "latent"), [(1, 1, 1), (2, 5, 2), (5, 5, 2), (80, 81, 21), (81, 81, 21), (82, 85, 22)]
)
def test_lengths_are_padded_to_the_next_four_k_plus_one(frames, padded, latent):
    assert causal_length(frames, 4) == padded
    assert latent_frames(frames, 4) == latent


@pytest.mark.parametrize("frames", [1, 2, 5, 80, 81, 82])
def test_every_source_frame_gets_exactly_one_styled_frame_through_the_real_vae(frames, vae):
    # Each frame a flat grey of its own, so that the padding's order and content can be checked; the
    # random-weight VAE cannot reconstruct pictures, so through it only the lengths are.
    levels = torch.linspace(-0.8, 0.8, frames)
    clip = levels.view(1, 1, frames, 1, 1).expand(1, 3, frames, 16, 16).contiguous()
    padded = pad_frames(clip, 4)
    assert padded.shape[2] == causal_length(frames, 4)
    torch.testing.assert_close(padded[:, :, :frames], clip)  # the source first, untouched
    assert (padded[:, :, frames:] == clip[:, :, -1:]).all()  # then its last frame, held
    with torch.no_grad():
        latents = vae.encode(padded).latent_dist.mode()
        decoded = vae.decode(latents).sample
    assert latents.shape[2] == latent_frames(frames, 4)
    assert decoded.shape[2] == padded.shape[2]
    styled = trim_frames(decoded, frames)
    assert styled.shape == clip.shape


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="at least one frame"):
        causal_length(0, 4)
    with pytest.raises(ValueError, match="fewer than the source"):
        trim_frames(torch.zeros(1, 3, 5, 2, 2), 6)
