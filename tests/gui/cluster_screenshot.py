"""Drive the real Blender application for screenshots of the Cluster preference and Check Cluster (run by blender-gui).

    rm -rf /tmp/unsample-gui-cluster
    ../shared/tools/blender-gui run --shot 45 /tmp/cluster-panel.png --shot 75 /tmp/cluster-preferences.png -- \
        --factory-startup --python tests/gui/cluster_screenshot.py

(tests/gui/cluster-panel.png is the first shot's lower part, y 525 to 1080: the sequencer and its sidebar;
tests/gui/cluster-preferences.png is the second shot cut to the Preferences window, x 617 to 1304 and y 269
to 810 here, the place /tmp/unsample-gui-cluster/log.txt gives along with the time each check answered:

    .venv/bin/python -c "from PIL import Image; shot = lambda name, box: \
        Image.open(f'/tmp/{name}.png').crop(box).save(f'tests/gui/{name}.png', optimize=True); \
        shot('cluster-panel', (0, 525, 1920, 1080)); shot('cluster-preferences', (617, 269, 1304, 810))"
)

The add-on is enabled as an extension of a local repository in /tmp whose files link to the checkout's,
not from sys.path as the other GUI scripts do: Blender's Preferences list only add-ons it finds in its
add-on paths and extension repositories, so only then do they show its preferences (and the panel's
preferences button, preferences.addon_show, opens them).

It opens the Video Editing workspace with a clip in the sequencer and the Unsample tab showing with the
Models sub-panel open; Cluster is "This Machine's GPUs" and Worker Python the checkout's .venv (torch and
Ray). About 15 s in it presses Check Cluster, which starts a local Ray through the worker's
`doctor --cluster auto` (6.5 s on a 2-core machine with a benchmark running), and once the answer is in it
scrolls the sidebar down to the Models sub-panel's end. At 55 s, or once that answer is in, Cluster
becomes "Ray Cluster" at 127.0.0.1:1, where nothing listens, the add-on's preferences open as the panel's
preferences button opens them, and Check Cluster is pressed again: its error comes within a second or two.
"""

import importlib
import sys
import time
from pathlib import Path

import bpy

ROOT = Path(__file__).resolve().parents[2]
WORK = Path("/tmp/unsample-gui-cluster")
sys.path.insert(0, str(Path(__file__).parent))

import sidebar_screenshots  # noqa: E402
from sidebar_screenshots import open_the_sidebar, sequencer_areas, street_scene  # noqa: E402

bpy.app.timers.unregister(sidebar_screenshots.open_video_editing)  # its own run starts a restyle: not here

START = time.monotonic()
PRESS_AT, ADDRESS_AT = 15.0, 55.0
REPO = "unsample_checkout"
ADDON = f"bl_ext.{REPO}.unsample"  # the add-on's module name, as an installed extension's is
ADDRESS = "127.0.0.1:1"  # nothing listens there


def log(text: str) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "log.txt", "a", encoding="utf-8") as file:
        file.write(f"{time.monotonic() - START:6.1f} s  {text}\n")


def prefs() -> bpy.types.AddonPreferences:
    return bpy.context.preferences.addons[ADDON].preferences


def addon_module(name: str):
    return importlib.import_module(f"{ADDON}.{name}")


def enable_as_extension() -> None:
    """The checkout's add-on as the extension "unsample" of a local repository: its files link to the checkout."""
    folder = WORK / "extensions" / "unsample"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "addon", "engine"):
        (folder / name).symlink_to(ROOT / "blender_unsample" / name)
    (folder / "blender_manifest.toml").symlink_to(ROOT / "blender_manifest.toml")
    repo = bpy.context.preferences.extensions.repos.new(
        name="Unsample checkout", module=REPO, custom_directory=str(folder.parent), source="USER"
    )
    log(f"extension repository {repo.module} at {repo.directory}")
    import addon_utils

    addon_utils.enable(ADDON, default_set=True)
    log(f"enabled {ADDON}: {ADDON in bpy.context.preferences.addons}")


def open_models_by_default() -> None:
    """Models is closed by default and Python cannot open a sub-panel: register it (and the sub-panels
    after it, to keep their order) again as open, before the sidebar first draws it."""
    panel = addon_module("addon.panel")
    after = [
        panel.SEQUENCER_PT_unsample_models,
        panel.SEQUENCER_PT_unsample_sampling,
        panel.SEQUENCER_PT_unsample_control,
        panel.SEQUENCER_PT_unsample_frames,
    ]
    for cls in reversed(after):
        bpy.utils.unregister_class(cls)
    panel.SEQUENCER_PT_unsample_models.bl_options = set()
    for cls in after:
        bpy.utils.register_class(cls)


def sidebar():
    for window, area in sequencer_areas():
        if area.spaces.active.view_type in {"SEQUENCER", "SEQUENCER_PREVIEW"}:
            return window, area, next(r for r in area.regions if r.type == "UI")
    raise LookupError("no sequencer")


def log_layout() -> None:
    for window in bpy.context.window_manager.windows:
        log(f"window {window.screen.name}: x {window.x} y {window.y} size {window.width} x {window.height}")
        for area in window.screen.areas:
            # Window coordinates count from the bottom; a screenshot's rows from the top.
            top = window.height - (area.y + area.height)
            log(f"  {area.type:16} x {area.x}..{area.x + area.width}  rows {top}..{top + area.height}")


def set_up() -> None:
    enable_as_extension()
    open_models_by_default()
    settings = prefs()
    settings.worker_python = str(ROOT / ".venv" / "bin" / "python")  # has torch, diffusers and Ray
    settings.cache_folder = str(WORK / "cache")
    settings.cluster = "LOCAL"

    scene = street_scene(WORK / "clip", 12, (128, 72))
    scene.unsample.prompt = "an oil painting of a city street at dusk"
    scene.unsample.unsample_prompt = "a yellow square moving right over a blue gradient"
    open_the_sidebar()
    bpy.app.timers.register(press_check_cluster, first_interval=PRESS_AT - (time.monotonic() - START))
    bpy.app.timers.register(watch_the_answers, first_interval=1.0)
    bpy.app.timers.register(check_an_address, first_interval=ADDRESS_AT - (time.monotonic() - START))


def press_check_cluster() -> None:
    window, area, region = sidebar()
    with bpy.context.temp_override(window=window, area=area, region=region):
        bpy.ops.sequencer.unsample_check_cluster("INVOKE_DEFAULT")
    log(f"pressed Check Cluster ({prefs().cluster} {prefs().cluster_address})")


_seen: set[str] = set()


def watch_the_answers() -> float | None:
    """Log when each check's answer comes (to time the shots); scroll the sidebar to the local one."""
    cluster, runner = addon_module("addon.cluster"), addon_module("addon.prefs")
    for target in ("auto", ADDRESS):
        report = cluster.cluster_report(runner.worker_python(), cluster.ClusterChoice(target))
        if report and not report.get("checking") and target not in _seen:
            _seen.add(target)
            log(f"answer for {target}: {report}")
            log(f"  the panel says: {cluster.describe(report)}")
            if target == "auto":
                bpy.app.timers.register(scroll_to_the_end, first_interval=1.0)
    return None if ADDRESS in _seen else 1.0


def scroll_to_the_end() -> None:
    """The sidebar is shorter than the Unsample tab with Models open: scroll as a user would, to its end."""
    window, area, region = sidebar()
    with bpy.context.temp_override(window=window, area=area, region=region):
        for _ in range(5):
            bpy.ops.view2d.scroll_down(page=True)
    log("scrolled the sidebar down")
    log_layout()


def check_an_address() -> float | None:
    if "auto" not in _seen:
        return 1.0  # the local check is still running: its shot first
    settings = prefs()
    settings.cluster = "ADDRESS"
    settings.cluster_address = ADDRESS
    window, area, region = sidebar()
    with bpy.context.temp_override(window=window, area=area, region=region):
        bpy.ops.preferences.addon_show(module=ADDON)  # as the panel's preferences button does
    bpy.app.timers.register(press_check_cluster, first_interval=2.0)
    bpy.app.timers.register(log_layout, first_interval=4.0)
    return None


def open_video_editing() -> None:
    bpy.ops.wm.read_homefile(app_template="Video_Editing")
    bpy.app.timers.register(set_up, first_interval=2.0)


bpy.app.timers.register(open_video_editing, first_interval=1.0)
