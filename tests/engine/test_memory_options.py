"""The options that lower GPU memory: offload by job phase, VAE batch size and tiling, feed-forward chunking."""

import numpy as np
import pytest
import torch
from conftest import write_clip
from PIL import Image

from blender_unsample.engine.job import devices
from blender_unsample.engine.job.devices import Residency, default_vae_batch
from blender_unsample.engine.job.pipeline import restyle


class Recorder(torch.nn.Module):
    """A model that records where it is moved."""

    def __init__(self, name, log):
        super().__init__()
        self.name, self.log, self.where = name, log, "cpu"

    def to(self, device):
        self.where = str(device)
        self.log.append((self.name, self.where))
        return self


def test_offload_keeps_only_the_models_of_the_phase_at_hand_on_the_gpu(monkeypatch):
    monkeypatch.setattr(devices, "free_memory", lambda device: None)
    log = []
    unet, controlnet, vae = (Recorder(n, log) for n in ("unet", "controlnet", "vae"))
    residency = Residency(torch.device("cuda"), offload=True)
    residency.place([unet, controlnet, vae])
    assert log == [], "with offload nothing moves up front"
    with residency.phase(vae):
        assert (unet.where, vae.where) == ("cpu", "cuda")
    with residency.phase(unet, controlnet):
        assert (unet.where, controlnet.where, vae.where) == ("cuda", "cuda", "cpu")
    assert (unet.where, controlnet.where) == ("cpu", "cpu")


def test_without_offload_everything_is_placed_once():
    log = []
    unet, vae = Recorder("unet", log), Recorder("vae", log)
    residency = Residency(torch.device("cuda"), offload=False)
    residency.place([unet, vae, None])
    with residency.phase(vae):
        pass
    assert log == [("unet", "cuda"), ("vae", "cuda")]


def test_offload_does_nothing_off_cuda():
    log = []
    residency = Residency(torch.device("mps"), offload=True)  # one memory for CPU and GPU there
    residency.place([Recorder("unet", log)])
    assert log == [("unet", "mps")]


def test_the_vae_batch_follows_the_family_when_unset():
    assert default_vae_batch("sd15", torch.float32) == 8
    assert default_vae_batch("sd15", torch.float16) == 8
    assert default_vae_batch("sdxl", torch.float32) == 1  # full precision: about 3 GB a frame at 1024 px
    assert default_vae_batch("sdxl", torch.float16) == 2


def test_vae_tiling_really_tiles_and_keeps_the_picture(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 2, size=(320, 256))
    common = dict(motion_adapter="none", control="none", steps=1, inversion_refinement=0)
    restyle(tiny_spec(clip, out=str(tmp_path / "whole"), **common), lambda event: None)
    restyle(tiny_spec(clip, out=str(tmp_path / "tiled"), vae_tiling=True, **common), lambda event: None)
    whole = np.asarray(Image.open(tmp_path / "whole" / "frame_0001.png"), dtype=np.int16)
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "frame_0001.png"), dtype=np.int16)
    difference = np.abs(whole - tiled).mean()
    assert 0 < difference < 40, f"tiling must change the pixels a little (seams), not break them: {difference}"


@pytest.mark.parametrize("batch", [1, 3])
def test_every_vae_batch_size_writes_every_frame(tiny_spec, tmp_path, batch):
    clip = tmp_path / "clip"
    write_clip(clip, 5)
    events = []
    restyle(tiny_spec(clip, vae_batch=batch, control="none", steps=1), events.append)
    assert [e.index for e in events if e.type == "frame"] == [0, 1, 2, 3, 4]


def test_feed_forward_chunking_slices_the_largest_layers_and_keeps_the_picture(tiny_spec, tmp_path):
    from diffusers.models.attention import FeedForward

    clip = tmp_path / "clip"
    write_clip(clip, 4)
    largest = {}

    def record(module, args):
        if isinstance(module, FeedForward):
            largest[run] = max(largest.get(run, 0), args[0].numel())

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        for run in ("whole", "chunked"):
            spec = tiny_spec(clip, out=str(tmp_path / run), context=4, steps=2, chunk_feed_forward=run == "chunked")
            restyle(spec, lambda event: None)
    finally:
        hook.remove()
    # Spatial layers see one frame of the CFG batch of 2 x 4, the motion module one frame of 4.
    assert largest["chunked"] * 4 <= largest["whole"], largest
    for frame in ("frame_0001.png", "frame_0004.png"):
        whole = np.asarray(Image.open(tmp_path / "whole" / frame), dtype=np.int16)
        chunked = np.asarray(Image.open(tmp_path / "chunked" / frame), dtype=np.int16)
        assert np.abs(whole - chunked).max() <= 1, "chunking must not change the picture"
