"""Drive the real Blender application for a screenshot of a fresh install (run by blender-gui).

    rm -rf /tmp/unsample-gui-missing
    ../shared/tools/blender-gui run --shot 40 /tmp/worker-missing.png -- \
        --factory-startup --python tests/gui/worker_missing_screenshot.py
    ../shared/tools/blender-gui shell convert /tmp/worker-missing.png -crop 1920x555+0+525 +repage \
        tests/gui/worker-missing.png

(tests/gui/worker-missing.png is that shot's lower part, y 525 to 1080: the sequencer and its sidebar.)

It opens the Video Editing workspace with a clip in the sequencer and the Unsample tab showing, on
Blender's own Python (which has no torch) with Blender's factory settings (Allow Online Access off):
the warning names the missing packages, says why Set Up Worker is grey next to the Allow Online
Access checkbox, and Restyle is grey.
"""

import sys
from pathlib import Path

import bpy

ROOT = Path(__file__).resolve().parents[2]
WORK = Path("/tmp/unsample-gui-missing")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import sidebar_screenshots  # noqa: E402
from sidebar_screenshots import open_the_sidebar, street_scene  # noqa: E402

bpy.app.timers.unregister(sidebar_screenshots.open_video_editing)  # its own run starts a restyle: not here


def set_up() -> None:
    import addon_utils

    addon_utils.enable("blender_unsample", default_set=True)
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    prefs.worker_python = ""  # a fresh install: Blender's own Python, without torch
    prefs.cache_folder = str(WORK / "cache")
    scene = street_scene(WORK / "clip", 12, (128, 72))
    scene.unsample.prompt = "an oil painting of a city street at dusk"
    open_the_sidebar()


def open_video_editing() -> None:
    bpy.ops.wm.read_homefile(app_template="Video_Editing")
    bpy.app.timers.register(set_up, first_interval=2.0)


bpy.app.timers.register(open_video_editing, first_interval=1.0)
