"""Restyle a strip in the Blender application started with --background, as a render-farm script
would: there the frames are exported by a second `blender --background`, the path the tests in
bpy (Blender as a Python module) cannot take. Run by hand with blender-gui's Blender 4.3:

    .venv/bin/python -m blender_unsample.engine tiny-models /tmp/unsample-gui/models
    ../shared/tools/blender-gui shell blender --background --factory-startup \
        --python-exit-code 1 --python tests/gui/background_restyle.py

It prints what it checked and exits 0; a failed check exits 1.
"""

import sys
import time
from pathlib import Path

import bpy

ROOT = Path(__file__).resolve().parents[2]
WORK = Path("/tmp/unsample-gui/background")
MODELS = Path("/tmp/unsample-gui/models/sd15")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from sidebar_screenshots import write_frames  # noqa: E402  (after the path is set)


def strips_of(scene: bpy.types.Scene):
    editor = scene.sequence_editor
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def pixels(path: Path, size: tuple[int, int] | None = None) -> tuple[tuple[int, int], list[float]]:
    """An image's size and pixels, scaled to ``size`` first if given."""
    image = bpy.data.images.load(str(path))
    if size:
        image.scale(*size)
    found = (tuple(image.size), list(image.pixels))
    bpy.data.images.remove(image)
    return found


def closest(frame: Path, clip: list[Path]) -> int:
    """Which clip frame an exported frame shows (exported at the job's size, so the clip is scaled)."""
    size, exported = pixels(frame)
    distances = [sum(abs(a - b) for a, b in zip(exported, pixels(c, size)[1], strict=True)) for c in clip]
    return distances.index(min(distances))


def main() -> None:
    import addon_utils

    assert bpy.app.binary_path, "run this in the Blender application, not in bpy"
    addon_utils.enable("blender_unsample", default_set=True)
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    prefs.worker_python = str(ROOT / ".venv" / "bin" / "python")
    prefs.cache_folder = str(WORK / "cache")
    prefs.device = "cpu"

    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 128, 72
    scene.sequence_editor_create()
    frames = write_frames(WORK / "clip", 10, size=(128, 72))
    source = strips_of(scene).new_image("Street", str(frames[0]), 1, 5, fit_method="FIT")
    for frame in frames[1:]:
        source.elements.append(frame.name)
    source.frame_offset_start = 2  # trimmed: the export must render the strip's own frames 7..14
    source.select = True
    scene.sequence_editor.active_strip = source
    scene.frame_current = 9  # the playhead inside the strip, as an editor leaves it

    settings = scene.unsample
    settings.prompt = "an oil painting"
    settings.unsample_prompt_mode, settings.unsample_prompt = "SOURCE", "a yellow square over a gradient"
    settings.checkpoint = str(MODELS / "checkpoint")
    settings.motion_module = str(MODELS / "motion_adapter")
    settings.controlnet_model = str(MODELS / "controlnet")
    settings.steps, settings.context, settings.overlap = 2, 8, 2
    settings.resolution, settings.width, settings.height = "CUSTOM", 64, 40

    started = time.monotonic()
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    state = bpy.context.window_manager.unsample
    assert state.status == "FINISHED", f"{state.status}: {state.message}\n{state.log_tail}"
    [styled] = [s for s in strips_of(scene) if s != source]
    placed = (styled.channel, styled.frame_final_start, styled.frame_final_duration)
    expected = (source.channel + 1, source.frame_final_start, source.frame_final_duration)
    assert placed == expected, f"styled strip at {placed}, expected {expected}"
    assert len(styled.elements) == source.frame_final_duration
    [run] = (WORK / "cache" / "jobs").glob("*/runs/*")
    exported = sorted((run / "frames").glob("*.png"))
    shown = [closest(frame, frames) for frame in exported]
    assert shown == list(range(2, 10)), f"exported frames show clip frames {shown}, expected 2..9"
    print(f"background_restyle: OK in Blender {bpy.app.version_string}, {time.monotonic() - started:.1f} s:")
    print(f"  exported by {bpy.app.binary_path} --background; '{styled.name}' at channel {placed[0]},")
    print(f"  frames {placed[1]}..{placed[1] + placed[2] - 1}, {len(styled.elements)} images; {state.message}")
    print(f"  the exported frames show clip frames {shown[0]}..{shown[-1]} (the playhead was on frame 9)")


main()
