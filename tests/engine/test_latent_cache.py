"""Unsample once, restyle many times: the unsampled latents come back from the cache."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_clip
from PIL import Image

from blender_unsample.engine.job.devices import Placement
from blender_unsample.engine.job.frames import pixel_digest
from blender_unsample.engine.job.latent_cache import LatentCache, cache_key
from blender_unsample.engine.job.pipeline import restyle
from blender_unsample.engine.protocol import Done, Progress


def run(spec):
    events = []
    restyle(spec, events.append)
    return events


def unsample_calls(events) -> int:
    return sum(isinstance(e, Progress) and e.stage == "unsample" for e in events)


def frames(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.fixture
def clip(tmp_path):
    write_clip(tmp_path / "clip", 4)
    return tmp_path / "clip"


def test_a_new_style_prompt_reuses_the_unsampled_latents(tiny_spec, clip, tmp_path):
    cache = tmp_path / "cache"
    source = dict(unsample_prompt="a disc over stripes", cache_dir=str(cache), control="none")
    cold = run(tiny_spec(clip, out=str(tmp_path / "first"), prompt="an oil painting", **source))
    assert unsample_calls(cold) > 0 and not cold[-1].unsample_cached
    warm = run(tiny_spec(clip, out=str(tmp_path / "second"), prompt="a charcoal sketch", cfg=3.0, **source))
    assert unsample_calls(warm) == 0, "no unsample model calls on a cache hit"
    assert isinstance(warm[-1], Done) and warm[-1].unsample_cached
    # The result is what a cold run with the second settings gives, bit for bit.
    run(tiny_spec(clip, out=str(tmp_path / "reference"), prompt="a charcoal sketch", cfg=3.0, control="none",
                  unsample_prompt="a disc over stripes"))  # fmt: skip
    np.testing.assert_array_equal(frames(tmp_path / "second"), frames(tmp_path / "reference"))


def replace_the_unet_file(checkpoint: Path) -> dict:
    """The checkpoint's UNet weights rewritten in place (a new download, say): same path, new file."""
    weights = checkpoint / "unet" / "diffusion_pytorch_model.safetensors"
    later = weights.stat().st_mtime_ns + 10**9
    os.utime(weights, ns=(later, later))
    return {}


# Each changes what the unsample pass computes: the cached latents no longer apply.
UNSAMPLE_CHANGES = {
    "steps": {"steps": 3},
    "sampler": {"sampler": "dpmpp_2m"},
    "schedule": {"scheduler": "karras"},
    "size": {"width": 64, "height": 64},
    "model file": replace_the_unet_file,
    "context length": {"context": 4},
    "overlap": {"overlap": 1},
    "vae tiling": {"vae_tiling": True},
    "refinement": {"inversion_refinement": 2},
    "unsample cfg": {"unsample_cfg": 6.0},
    "unsample prompt": {"unsample_prompt": "something else"},
    "control while unsampling": {"control_in_unsample": True},
}
# Each acts on the resample pass only: the cached latents apply. The base runs a real ControlNet.
STYLE_CHANGES = {
    "style prompt": {"prompt": "a charcoal sketch"},
    "style cfg": {"cfg": 3.5},
    "controlnet type": {"control": "tile"},
    "controlnet strength": {"controlnet_strength": 0.8},
    "noise": {"noise": 0.5},
    "seed": {"seed": 7},
}


def restyle_twice(tiny_spec, checkpoint_source, tmp_path, change, **base_changes) -> list:
    """A two-frame restyle with a real ControlNet, then one with ``change``: the second's events."""
    write_clip(tmp_path / "clip", 2)
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(checkpoint_source, checkpoint)
    base = dict(
        unsample_prompt="a disc over stripes", cache_dir=str(tmp_path / "cache"), model=str(checkpoint), steps=2,
        control="canny", controlnet_strength=0.3, noise=0.2, seed=0, **base_changes,
    )  # fmt: skip
    assert unsample_calls(run(tiny_spec(tmp_path / "clip", out=str(tmp_path / "a"), **base))) > 0
    changed = change(checkpoint) if callable(change) else change
    again = run(tiny_spec(tmp_path / "clip", out=str(tmp_path / "b"), **{**base, **changed}))
    assert any(isinstance(e, Progress) and e.stage == "resample" for e in again), "the style pass always runs"
    return again


@pytest.mark.parametrize(
    ("change", "cached"),
    [pytest.param(c, False, id=name) for name, c in UNSAMPLE_CHANGES.items()]
    + [pytest.param(c, True, id=name) for name, c in STYLE_CHANGES.items()],
)
def test_only_a_change_to_the_unsample_pass_unsamples_again(tiny_spec, tiny_models, tmp_path, change, cached):
    again = restyle_twice(tiny_spec, tiny_models.checkpoint, tmp_path, change)
    assert again[-1].unsample_cached == cached
    assert (unsample_calls(again) == 0) == cached


def test_with_control_while_unsampling_a_new_controlnet_strength_unsamples_again(tiny_spec, tiny_models, tmp_path):
    again = restyle_twice(
        tiny_spec, tiny_models.checkpoint, tmp_path, {"controlnet_strength": 0.8}, control_in_unsample=True
    )
    assert unsample_calls(again) > 0 and not again[-1].unsample_cached


def test_latents_made_on_another_kind_of_device_or_precision_are_not_reused(tiny_spec, clip):
    spec, paths = tiny_spec(clip, unsample_prompt="x"), sorted(clip.glob("*.png"))
    placements = [
        Placement(torch.device("cuda"), torch.float16, torch.float16),
        Placement(torch.device("mps"), torch.float16, torch.float16),
        Placement(torch.device("mps"), torch.float16, torch.float32),
        Placement(torch.device("cpu"), torch.float32, torch.float32),
    ]
    pixels = pixel_digest(paths)
    keys = [cache_key(spec, pixels, (64, 48), placement) for placement in placements]
    assert len(set(keys)) == len(placements)
    assert cache_key(spec, pixels, (64, 48), placements[0]) == keys[0], "the same setup finds its entry"


def test_other_frames_unsample_again(tiny_spec, clip, tmp_path):
    source = dict(unsample_prompt="x", cache_dir=str(tmp_path / "cache"), control="none")
    run(tiny_spec(clip, out=str(tmp_path / "a"), **source))
    with Image.open(clip / "frame_0003.png") as image:
        image.rotate(180).save(clip / "frame_0003.png")
    assert unsample_calls(run(tiny_spec(clip, out=str(tmp_path / "b"), **source))) > 0


def test_with_the_style_prompt_as_unsample_prompt_a_new_style_unsamples_again(tiny_spec, clip, tmp_path):
    cache = str(tmp_path / "cache")
    run(tiny_spec(clip, out=str(tmp_path / "a"), prompt="ink", cache_dir=cache, control="none"))
    again = run(tiny_spec(clip, out=str(tmp_path / "b"), prompt="oil", cache_dir=cache, control="none"))
    assert unsample_calls(again) > 0  # the README says so: a fixed source prompt is what makes hits


def test_a_damaged_entry_is_detected_and_recomputed(tiny_spec, clip, tmp_path):
    cache = tmp_path / "cache"
    source = dict(unsample_prompt="x", cache_dir=str(cache), control="none")
    run(tiny_spec(clip, out=str(tmp_path / "a"), **source))
    for entry in cache.glob("*.safetensors"):  # the unsampled and the styled latents
        data = bytearray(entry.read_bytes())
        data[-8:] = bytes(8 * [0x7F])  # flip bytes inside the tensor data: the file still parses
        entry.write_bytes(bytes(data))
    again = run(tiny_spec(clip, out=str(tmp_path / "b"), **source))
    assert unsample_calls(again) > 0 and not again[-1].unsample_cached
    np.testing.assert_array_equal(frames(tmp_path / "a"), frames(tmp_path / "b"))
    third = run(tiny_spec(clip, out=str(tmp_path / "c"), **source))
    assert third[-1].unsample_cached, "the recomputed entry replaced the damaged one"


def key(letter: str) -> str:
    return letter * 64  # keys are sha256 digests in hex


def test_the_least_recently_used_entries_go_first(tmp_path):
    entry = torch.zeros(1, 4, 4, 8, 8)  # 4 KiB of data per entry
    cache = LatentCache(tmp_path / "cache", limit_bytes=3 * 4096 + 2000)
    for letter in "abc":
        cache.put(key(letter), entry)
    assert cache.get(key("a")) is not None  # now the most recently used
    cache.put(key("d"), entry)
    kept = sorted(p.stem[0] for p in (tmp_path / "cache").glob("*.safetensors"))
    assert kept == ["a", "c", "d"]
    assert cache.size_bytes() <= cache.limit_bytes
    cache.clear()
    assert cache.size_bytes() == 0 and cache.get(key("a")) is None


def users_own_files(folder: Path) -> dict[str, bytes]:
    """What a user keeps in the folder they point --cache-dir at: a LoRA and a checkpoint (also
    safetensors), an entry-like file of another program, notes, a half-downloaded file."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_down.lora_up.weight": torch.ones(4, 4)}, str(folder / "style.safetensors"))
    save_file({"model.diffusion_model.x": torch.ones(64, 64)}, str(folder / "checkpoint.safetensors"))
    # Named like an entry, with a "latents" tensor, but without the cache's checksum.
    save_file({"latents": torch.ones(8, 8)}, str(folder / f"{key('e')}.safetensors"), metadata={"by": "them"})
    (folder / "notes.txt").write_text("keep me")
    (folder / "download.partial").write_bytes(b"half")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_the_cache_never_evicts_counts_or_clears_a_users_files_beside_it(tiny_spec, clip, tmp_path):
    cache_dir = tmp_path / "models"
    theirs = users_own_files(cache_dir)
    # A cap of 1 MB forces eviction after every job; the user's files alone are far bigger than a
    # tiny entry, so a cache counting them would evict them too.
    source = dict(unsample_prompt="x", cache_dir=str(cache_dir), cache_limit_mb=0, control="none")
    for prompt in ("ink", "oil", "chalk"):
        run(tiny_spec(clip, out=str(tmp_path / prompt), prompt=prompt, **source))
    assert {name: (cache_dir / name).read_bytes() for name in theirs} == theirs, "every file of theirs as it was"
    cache = LatentCache(cache_dir, 2**30)
    cache.put(key("f"), torch.zeros(1, 4, 2, 8, 8))
    own = [p for p in cache_dir.iterdir() if p.name not in theirs]
    assert len(own) == 2, "the last job's styled latents (the cap evicted the rest) and the one just put"
    assert cache.size_bytes() == sum(p.stat().st_size for p in own), "only its own counted"
    cache.clear()
    assert {p.name for p in cache_dir.iterdir()} == set(theirs), "clearing took only its own entries"
    assert {name: (cache_dir / name).read_bytes() for name in theirs} == theirs


def test_entries_written_before_their_writer_was_recorded_are_still_the_caches_own(tmp_path):
    from safetensors.torch import save_file

    from blender_unsample.engine.job.latent_cache import _checksum
    from blender_unsample.engine.protocol import cache_files

    latents = torch.zeros(1, 4, 2, 8, 8)
    old = tmp_path / f"{key('a')}.safetensors"  # as the cache wrote it before "written_by"
    save_file({"latents": latents}, str(old), metadata={"checksum": _checksum(latents)})
    assert cache_files(tmp_path) == [old]
    assert LatentCache(tmp_path, 2**30).get(key("a")) is not None


def test_an_interrupted_job_run_again_only_decodes_the_frames_it_lacks(tiny_spec, clip, tmp_path):
    import threading

    from blender_unsample.engine.errors import UnsampleError
    from blender_unsample.engine.protocol import FrameWritten

    settings = dict(cache_dir=str(tmp_path / "cache"), control="canny", vae_batch=1, out=str(tmp_path / "out"))
    cancel, events = threading.Event(), []

    def stop_after_two(event):
        events.append(event)
        if isinstance(event, FrameWritten) and event.index == 1:
            cancel.set()

    with pytest.raises(UnsampleError):
        restyle(tiny_spec(clip, **settings), stop_after_two, cancel)
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    resumed = run(tiny_spec(clip, **settings))
    assert resumed[-1].frames_reused == 2 and resumed[-1].frames == 4
    assert not any(isinstance(e, Progress) and e.stage in ("unsample", "resample") for e in resumed)
    run(tiny_spec(clip, control="canny", vae_batch=1, out=str(tmp_path / "clean")))
    np.testing.assert_array_equal(frames(tmp_path / "out"), frames(tmp_path / "clean"))


def test_frames_left_by_a_different_job_in_the_output_folder_are_replaced(tiny_spec, clip, tmp_path):
    settings = dict(cache_dir=str(tmp_path / "cache"), control="none", out=str(tmp_path / "out"))
    run(tiny_spec(clip, prompt="ink", **settings))
    other = run(tiny_spec(clip, prompt="oil", **settings))
    assert other[-1].frames_reused == 0
    run(tiny_spec(clip, prompt="oil", control="none", out=str(tmp_path / "clean")))
    np.testing.assert_array_equal(frames(tmp_path / "out"), frames(tmp_path / "clean"))
