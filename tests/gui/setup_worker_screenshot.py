"""Drive the real Blender application for a screenshot of Set Up Worker running (run by blender-gui).

    rm -rf /tmp/unsample-gui-setup
    ../shared/tools/blender-gui run --shot 52 /tmp/setup-worker.png -- \
        --factory-startup --python tests/gui/setup_worker_screenshot.py

(tests/gui/setup-worker.png is that shot's lower part, y 525 to 1080: the sequencer and its sidebar.)

It opens the Video Editing workspace with a clip in the sequencer and the Unsample tab showing: the
worker check finds no torch in Blender's own Python and offers Set Up Worker. About 31 s in it presses it,
with the test wheelhouse (build/test-wheelhouse/, made by tests/blender/test_setup_worker.py) as the
Package Index. The Blender inside blender-gui runs Debian's Python 3.13 and the wheelhouse holds
cp311 wheels, so the environment is made from the checkout's .venv Python (3.11) instead.
"""

import sys
from pathlib import Path

import bpy

ROOT = Path(__file__).resolve().parents[2]
WORK = Path("/tmp/unsample-gui-setup")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import sidebar_screenshots  # noqa: E402
from sidebar_screenshots import open_the_sidebar, sequencer_areas, street_scene  # noqa: E402

bpy.app.timers.unregister(sidebar_screenshots.open_video_editing)  # its own run starts a restyle: not here


def wheelhouse() -> Path:
    found = sorted(p for p in (ROOT / "build" / "test-wheelhouse").iterdir() if "partial" not in p.name)
    return found[-1]


def set_up() -> None:
    import addon_utils

    addon_utils.enable("blender_unsample", default_set=True)
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    prefs.worker_python = ""  # Blender's own Python, which has no torch: the panel offers Set Up Worker
    prefs.cache_folder = str(WORK / "cache")  # a checkout's add-on keeps the environment here
    prefs.package_index = wheelhouse().as_uri()

    scene = street_scene(WORK / "clip", 12, (128, 72))
    scene.unsample.prompt = "an oil painting of a city street at dusk"
    open_the_sidebar()
    bpy.app.timers.register(press_set_up_worker, first_interval=28.0)


def press_set_up_worker() -> None:
    for window, area in sequencer_areas():
        if area.spaces.active.view_type in {"SEQUENCER", "SEQUENCER_PREVIEW"}:
            region = next(r for r in area.regions if r.type == "UI")
            with bpy.context.temp_override(window=window, area=area, region=region):
                bpy.ops.sequencer.unsample_setup_worker("INVOKE_DEFAULT", python=str(ROOT / ".venv" / "bin" / "python"))
            return


def open_video_editing() -> None:
    bpy.ops.wm.read_homefile(app_template="Video_Editing")
    bpy.app.timers.register(set_up, first_interval=2.0)


bpy.app.timers.register(open_video_editing, first_interval=1.0)
