"""Unsample once, restyle many times: the unsampled latents come back from the cache."""

import numpy as np
import pytest
import torch
from conftest import write_clip
from PIL import Image

from blender_unsample.engine.latent_cache import LatentCache
from blender_unsample.engine.pipeline import restyle
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


@pytest.mark.parametrize("change", [{"unsample_cfg": 6.0}, {"unsample_prompt": "something else"}])
def test_changing_an_unsample_setting_unsamples_again(tiny_spec, clip, tmp_path, change):
    source = dict(unsample_prompt="a disc over stripes", cache_dir=str(tmp_path / "cache"), control="none")
    run(tiny_spec(clip, out=str(tmp_path / "a"), **source))
    again = run(tiny_spec(clip, out=str(tmp_path / "b"), **{**source, **change}))
    assert unsample_calls(again) > 0 and not again[-1].unsample_cached


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


def test_the_least_recently_used_entries_go_first(tmp_path):
    entry = torch.zeros(1, 4, 4, 8, 8)  # 4 KiB of data per entry
    cache = LatentCache(tmp_path / "cache", limit_bytes=3 * 4096 + 2000)
    for key in ("a", "b", "c"):
        cache.put(key, entry)
    assert cache.get("a") is not None  # now the most recently used
    cache.put("d", entry)
    kept = sorted(p.stem for p in (tmp_path / "cache").glob("*.safetensors"))
    assert kept == ["a", "c", "d"]
    assert cache.size_bytes() <= cache.limit_bytes
    cache.clear()
    assert cache.size_bytes() == 0 and cache.get("a") is None


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
