"""The styled strip shows the timeline as the editor made it: a strip that starts before frame 0,
one in a muted channel, and one that lets the channels below show through (its transparency,
crop, transform, opacity and blend mode) are restyled frame for frame and composite as the
source does. Each test runs a whole restyle with the stand-in worker, which hands the exported
frames back as the styled ones."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest
from conftest import add_image_strip, image_pixels, run_interactively, styled_strips, video_scene, write_frames

from blender_unsample.addon.jobs.export import FrameExporter
from blender_unsample.addon.jobs.runner import RUNNER


def restyle(scene, strip):
    """Restyle ``strip`` to the end; its styled strip."""
    RUNNER.enqueue(scene, [strip])
    run_interactively(scene)
    results = [s for s in styled_strips(scene) if s["unsample_source"] == strip.name]
    assert len(results) == 1, [o.message for o in RUNNER.outcomes]
    return results[0]


def frame_files(strip) -> list[Path]:
    folder = Path(bpy.path.abspath(strip.directory))
    return [folder / element.filename for element in strip.elements]


def square_left(path: Path) -> float:
    """Where the bright square of write_frames() starts, as a share of the frame's width."""
    image = bpy.data.images.load(str(path))
    width, height = image.size
    bpy.data.images.remove(image)
    rgba = image_pixels(path).reshape(height, width, 4)
    columns = np.nonzero(((rgba[..., 0] > 0.9) & (rgba[..., 2] < 0.4)).any(axis=0))[0]
    assert columns.size, f"no square in {path.name}"
    return columns[0] / width


def test_a_strip_that_starts_before_frame_0_is_restyled_frame_for_frame(quick_worker, tmp_path):
    scene = video_scene(bpy.context.scene)
    sources = write_frames(tmp_path / "src", 6)  # the square moves 6 px a frame: each frame its own
    early = add_image_strip(scene, "Early", sources, 1, -3)
    result = restyle(scene, early)
    assert (result.frame_final_start, result.frame_final_duration) == (-3, 6)
    styled = [round(square_left(path), 3) for path in frame_files(result)]
    assert styled == [round(square_left(path), 3) for path in sources], "frame i of the result is frame i of the strip"


def test_a_blender_that_cannot_show_a_frame_before_0_refuses_it(addon, tmp_path, monkeypatch):
    # The export process allows negative frames; this Blender is told not to, as factory settings say.
    monkeypatch.setattr(bpy.context.preferences.edit, "use_negative_frames", False)
    scene = video_scene(bpy.context.scene)
    early = add_image_strip(scene, "Early", write_frames(tmp_path / "src", 2), 1, -1)
    exporter = FrameExporter(scene, early, range(-1, 1), tmp_path / "frames", (64, 40))
    try:
        with pytest.raises(ValueError, match="cannot show frame -1: allow negative frames"):
            exporter.step(10.0)
    finally:
        exporter.close()
    assert not list((tmp_path / "frames").iterdir()), "no frame of the wrong picture"


def test_a_strip_in_a_muted_channel_is_restyled(image_strip, quick_worker):
    scene = bpy.context.scene
    channels = scene.sequence_editor.channels
    channels[image_strip.channel].mute = True  # muted as a channel, the strip itself not
    result = restyle(scene, image_strip)
    styled = [square_left(path) for path in frame_files(result)]
    assert styled == sorted(set(styled)) and len(styled) == 6, "the strip's own frames, the square moving"
    assert channels[image_strip.channel].mute, "the user's channel stays muted"


def solid_image(path: Path, rgba: tuple[float, float, float, float]) -> Path:
    image = bpy.data.images.new(path.stem, 8, 8)
    image.pixels.foreach_set(np.tile(np.array(rgba, dtype=np.float32), 64))
    image.filepath_raw, image.file_format = str(path), "PNG"
    image.save()
    bpy.data.images.remove(image)
    return path


def render_frame(scene, frame: int, path: Path) -> np.ndarray:
    """What the viewer shows at ``frame``, as RGBA (rows from the bottom)."""
    scene.frame_current = frame
    scene.render.filepath = str(path)
    with bpy.context.temp_override(scene=scene):
        bpy.ops.render.render(write_still=True, scene=scene.name)
    return image_pixels(path).reshape(scene.render.resolution_y // 2, scene.render.resolution_x // 2, 4)


def fade(strip) -> None:
    """Opacity keyframed from 0.2 to 1.0 over the strip's three frames."""
    for frame, opacity in ((strip.frame_final_start, 0.2), (strip.frame_final_end - 1, 1.0)):
        strip.blend_alpha = opacity
        strip.keyframe_insert("blend_alpha", frame=frame)


@pytest.mark.parametrize(
    ("blend_type", "opacity"),
    [("ALPHA_OVER", 0.4), ("MULTIPLY", 0.7), ("ALPHA_OVER", "fade")],
    ids=["alpha-over", "multiply", "faded-in"],
)
def test_a_strip_over_a_background_composites_as_its_source_does(quick_worker, tmp_path, blend_type, opacity):
    scene = video_scene(bpy.context.scene)
    scene.view_settings.view_transform = "Standard"
    scene.render.resolution_percentage = 50  # the viewer's picture at the exported frames' size
    scene.render.image_settings.color_mode = "RGBA"
    background = add_image_strip(scene, "Sky", [solid_image(tmp_path / "sky.png", (0.1, 0.4, 0.9, 1.0))], 1, 1)
    background.frame_final_duration = 3
    source = add_image_strip(scene, "Bird", write_frames(tmp_path / "src", 3), 2, 1)
    source.blend_type = blend_type
    if opacity == "fade":
        fade(source)
    else:
        source.blend_alpha = opacity
    # What lets the background through: the crop, and the smaller, moved picture; flipped too.
    source.crop.min_x, source.crop.max_y = 12, 8
    source.transform.scale_x, source.transform.scale_y = 0.6, 0.7
    source.transform.offset_x, source.transform.offset_y = 20, -8
    source.use_flip_x = True

    result = restyle(scene, source)
    for frame, path in zip(range(1, 4), frame_files(result), strict=True):
        source.mute, result.mute = False, True
        seen_source = render_frame(scene, frame, tmp_path / f"source_{frame}.png")
        source.mute, result.mute = True, False
        seen_result = render_frame(scene, frame, tmp_path / f"result_{frame}.png")
        difference = np.abs(seen_result - seen_source).max()
        assert difference <= 3 / 255, f"frame {frame}: composited unlike its source (off by {difference:.3f})"
        alpha = image_pixels(path)[3::4]
        assert alpha.min() == 0 and alpha.max() == 1, "the strip covers part of the frame: the rest is see-through"
    assert (result.blend_type, result.blend_alpha) == (source.blend_type, source.blend_alpha)
