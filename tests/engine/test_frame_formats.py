"""Frames reach the model as they display, or are refused with their name; bad inputs are named
before any model loads."""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_clip
from PIL import Image

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.job.frames import read_frames
from blender_unsample.engine.job.pipeline import restyle
from blender_unsample.engine.models import load_components
from blender_unsample.engine.protocol import Done, ErrorCode, Progress, WarningEvent


def run(spec) -> list:
    events = []
    restyle(spec, events.append)
    return events


def fail(spec, load=None) -> tuple[UnsampleError, list]:
    events = []
    with pytest.raises(UnsampleError) as error:
        restyle(spec, events.append, load=load)
    return error.value, events


def loaded_models(events) -> bool:
    return any(isinstance(e, Progress) and e.stage == "load" for e in events)


def gradient(width=64, height=48) -> np.ndarray:
    """A horizontal ramp over every level, 0 to 1."""
    return np.repeat(np.linspace(0, 1, width)[None, :], height, 0)


def test_a_16_bit_grey_png_reaches_the_model_as_it_looks(tmp_path):
    ramp = gradient()
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # what Pillow makes of it
    [pixels] = read_frames([tmp_path / "deep.png"], (64, 48))
    expected = (ramp * 255).round()
    assert np.abs(pixels.astype(float) - expected[..., None]).max() <= 1


def test_a_jpeg_turned_by_its_exif_orientation_is_read_upright(tmp_path, tiny_spec):
    clip = tmp_path / "clip"
    clip.mkdir()
    upright = write_clip(tmp_path / "drawn", 2, size=(48, 64))  # as the viewer shows them: 48 wide, 64 high
    for path in upright:
        stored = Image.open(path).rotate(90, expand=True)  # the camera stored it on its side: 64 x 48
        exif = Image.Exif()
        exif[0x0112] = 6  # "turn 90 degrees clockwise to display"
        stored.save(clip / path.with_suffix(".jpg").name, quality=98, exif=exif)
    [pixels, _] = read_frames(sorted(clip.iterdir()), (48, 64))
    reference = np.asarray(Image.open(upright[0]).convert("RGB")).astype(float)
    assert np.abs(pixels.astype(float) - reference).mean() < 4, "the same picture, up to JPEG's loss"
    done = run(tiny_spec(clip, control="none"))[-1]
    assert Image.open(Path(done.out) / "frame_0001.jpg").size == (48, 64), "written as it displays"


def test_transparency_is_kept_for_the_styled_frames(tmp_path, tiny_spec):
    clip = tmp_path / "clip"
    clip.mkdir()
    alphas = []
    for i, path in enumerate(write_clip(tmp_path / "drawn", 3)):
        rgba = Image.open(path).convert("RGBA")
        alpha = (gradient() * 255).astype(np.uint8)
        alpha[:, : 8 + 4 * i] = 0  # a moving transparent edge
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(clip / path.name)
        alphas.append(alpha)
    events = run(tiny_spec(clip, control="none"))
    assert any(isinstance(e, WarningEvent) and "3 of 3 frames have transparency" in e.message for e in events)
    for name, alpha in zip(sorted(p.name for p in clip.iterdir()), alphas, strict=True):
        styled = Image.open(Path(events[-1].out) / name)
        assert styled.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(styled)[..., 3], alpha)


@pytest.mark.parametrize(
    ("write", "kind"),
    [
        (lambda path: Image.fromarray(gradient().astype(np.float32)).save(path.with_suffix(".tif")), "floating-point"),
        (lambda path: Image.fromarray((gradient() * 1e6).astype(np.int32)).save(path.with_suffix(".tif")), "32-bit"),
    ],
    ids=["32-bit float TIFF", "32-bit integer TIFF"],
)
def test_frames_whose_levels_cannot_be_known_are_refused_by_name_before_models_load(tmp_path, tiny_spec, write, kind):
    clip = tmp_path / "clip"
    clip.mkdir()
    write(clip / "frame_0001")
    error, events = fail(tiny_spec(clip))
    assert error.code is ErrorCode.BAD_FRAMES
    assert "frame_0001.tif" in error.message and kind in error.message and "8- or 16-bit" in error.message
    assert not loaded_models(events)


def test_a_truncated_frame_is_named_before_models_load_with_the_cache_on(tmp_path, tiny_spec):
    clip = tmp_path / "clip"
    write_clip(clip, 3)
    data = (clip / "frame_0002.png").read_bytes()
    (clip / "frame_0002.png").write_bytes(data[: len(data) // 2])
    error, events = fail(tiny_spec(clip, cache_dir=str(tmp_path / "cache")))
    assert error.code is ErrorCode.BAD_FRAMES and "cannot read frame frame_0002.png" in error.message
    assert not loaded_models(events)


def test_a_frame_deleted_while_the_models_load_is_named(tmp_path, tiny_spec):
    clip = tmp_path / "clip"
    write_clip(clip, 3)

    def load_and_lose_a_frame(*args, **kwargs):
        (clip / "frame_0003.png").unlink()
        return load_components(*args, **kwargs)

    error, _ = fail(tiny_spec(clip, control="none", cache_dir=str(tmp_path / "cache")), load=load_and_lose_a_frame)
    assert error.code is ErrorCode.BAD_FRAMES and error.message == f"frame frame_0003.png is gone from {clip}"


@pytest.mark.skipif(os.name == "nt", reason="Windows names are always Unicode")
def test_a_frame_name_that_is_not_utf8_is_refused(tmp_path, tiny_spec):
    clip = tmp_path / "clip"
    [path] = write_clip(clip, 1)
    os.rename(path, os.path.join(os.fsencode(clip), b"frame_\xff.png"))
    error, events = fail(tiny_spec(clip))
    assert (
        error.code is ErrorCode.BAD_FRAMES and "frame_\\xff.png" in error.message and "not valid UTF-8" in error.message
    )
    assert not loaded_models(events)


@pytest.mark.parametrize("folder", ["cache_dir", "work_dir"])
def test_a_cache_or_work_folder_that_cannot_be_made_is_named_before_models_load(tmp_path, tiny_spec, folder):
    write_clip(tmp_path / "clip", 2)
    (tmp_path / "a file").write_text("not a folder")
    where = tmp_path / "a file" / "sub"
    error, events = fail(tiny_spec(tmp_path / "clip", **{folder: str(where)}))
    assert error.code is ErrorCode.OUTPUT_NOT_WRITABLE and str(where) in error.message
    assert ("cache folder" if folder == "cache_dir" else "work folder") in error.message
    assert not loaded_models(events)


def test_frames_given_as_a_file_are_named_as_one(tmp_path, tiny_spec):
    [path] = write_clip(tmp_path / "clip", 1)
    error, _ = fail(tiny_spec(path))
    assert error.code is ErrorCode.BAD_FRAMES and "is a file, not a folder of frames" in error.message


def test_a_palette_image_with_transparency_and_a_grey_one_are_read(tmp_path, tiny_spec):
    clip = tmp_path / "clip"
    clip.mkdir()
    for i, path in enumerate(write_clip(tmp_path / "drawn", 2)):
        image = Image.open(path)
        (image.convert("P") if i == 0 else image.convert("L")).save(clip / path.name, transparency=0)
    assert isinstance(run(tiny_spec(clip, control="none"))[-1], Done)
