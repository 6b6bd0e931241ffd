"""Drive the real Blender application for screenshots of the sidebar (run by blender-gui).

    .venv/bin/python -m blender_unsample.engine tiny-models /tmp/unsample-gui/models
    ../shared/tools/blender-gui run --shot 20 idle.png --shot 45 running.png --shot 110 done.png -- \
        --factory-startup --python tests/gui/sidebar_screenshots.py

It opens the Video Editing workspace with a clip in the sequencer and the Unsample tab showing,
then starts a restyle at 25 s on tiny models with the checkout's .venv as the worker Python.
"""

import os
import sys
from pathlib import Path

import bpy

ROOT = Path(__file__).resolve().parents[2]
WORK = Path("/tmp/unsample-gui")
sys.path.insert(0, str(ROOT))


def write_frames(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """A square moving over a gradient; plain Python (this Blender's Python may lack numpy)."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for i in range(count):
        pixels = []
        for y in range(height):
            for x in range(width):
                inside = abs(x - (20 + 8 * i)) < 18 and abs(y - height // 2) < 18
                pixels += (
                    (1.0, 0.85, 0.2, 1.0) if inside else (0.15 + 0.5 * x / width, 0.3, 0.6 - 0.4 * y / height, 1.0)
                )
        image = bpy.data.images.new(f"frame{i}", width, height)
        image.pixels[:] = pixels
        image.filepath_raw = str(folder / f"street_{i:04d}.png")
        image.file_format = "PNG"
        image.save()
        bpy.data.images.remove(image)
        paths.append(folder / f"street_{i:04d}.png")
    return paths


def street_scene(folder: Path, frame_count: int, size: tuple[int, int]) -> bpy.types.Scene:
    """The context scene at 720p with one selected, active image strip "Street" of frames drawn in ``folder``."""
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 1280, 720
    editor = scene.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    frames = write_frames(folder, frame_count, size=size)
    strip = strips.new_image("Street", str(frames[0]), 1, 1, fit_method="FIT")
    for frame in frames[1:]:
        strip.elements.append(frame.name)
    strip.select = True
    editor.active_strip = strip
    return scene


def open_the_sidebar() -> None:
    """The sequencer's sidebar shown, on the Unsample tab once it has drawn."""
    for _window, area in sequencer_areas():
        space = area.spaces.active
        if space.view_type in {"SEQUENCER", "SEQUENCER_PREVIEW"}:
            space.show_region_ui = True
            area.tag_redraw()
    bpy.app.timers.register(show_unsample_tab, first_interval=2.0)


def sequencer_areas():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                yield window, area


def set_up() -> None:
    import addon_utils

    addon_utils.enable("blender_unsample", default_set=True)
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    # UNSAMPLE_GUI_OWN_PYTHON=1: keep Blender's own Python as the worker, to see the panel's warning
    # when that Python has no torch.
    prefs.worker_python = "" if os.environ.get("UNSAMPLE_GUI_OWN_PYTHON") else str(ROOT / ".venv" / "bin" / "python")
    prefs.cache_folder = str(WORK / "cache")
    prefs.device = "cpu"

    scene = street_scene(WORK / "clip", 24, (256, 144))
    scene.frame_start, scene.frame_end, scene.frame_current = 1, 24, 8

    models = WORK / "models" / "sd15"
    settings = scene.unsample
    settings.prompt = "an oil painting of a city street at dusk"
    settings.unsample_prompt = "a yellow square moving right over a blue gradient"
    settings.checkpoint = str(models / "checkpoint")
    settings.motion_module = str(models / "motion_adapter")
    settings.controlnet_model = str(models / "controlnet")
    settings.steps, settings.context, settings.overlap = 10, 8, 2
    settings.resolution, settings.width, settings.height = "CUSTOM", 256, 144

    open_the_sidebar()
    if not os.environ.get("UNSAMPLE_GUI_OWN_PYTHON"):
        bpy.app.timers.register(start_restyle, first_interval=25.0)


def show_unsample_tab() -> None:
    # A sidebar knows its tabs only once it has drawn them, so this waits for a redraw.
    for _window, area in sequencer_areas():
        for region in area.regions:
            if region.type == "UI" and area.spaces.active.show_region_ui:
                region.active_panel_category = "Unsample"
                area.tag_redraw()


def start_restyle() -> None:
    for window, area in sequencer_areas():
        if area.spaces.active.view_type in {"SEQUENCER", "SEQUENCER_PREVIEW"}:
            region = next(r for r in area.regions if r.type == "WINDOW")
            with bpy.context.temp_override(window=window, area=area, region=region):
                bpy.ops.sequencer.unsample_restyle("INVOKE_DEFAULT")
            return


def open_video_editing() -> None:
    bpy.ops.wm.read_homefile(app_template="Video_Editing")
    bpy.app.timers.register(set_up, first_interval=2.0)


bpy.app.timers.register(open_video_editing, first_interval=1.0)
