"""Tests in real Blender (the bpy module): 5.0 in .venv, 5.3 in .venv-blender53, 4.2 LTS in .venv-blender42.

The 4.2 and 5.3 environments have no torch: their jobs run on the worker Python build.py names in
UNSAMPLE_TEST_WORKER_PYTHON (.venv's), as a user's existing torch environment would be used.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import bpy
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ADDON = "blender_unsample"


@pytest.fixture(scope="session", autouse=True)
def no_threads_at_exit():
    """Wait for the add-on's background threads (the worker's doctor report) before Python exits.

    bpy 4.2, Blender as a module, crashes (SIGSEGV) at interpreter exit while a thread of ours or
    a timer is still alive, after every test has passed. Blender itself quits cleanly.
    """
    yield
    for thread in threading.enumerate():
        if thread.name.startswith("unsample-"):
            thread.join(timeout=180)


def worker_python() -> str:
    return os.environ.get("UNSAMPLE_TEST_WORKER_PYTHON") or sys.executable


def strips_of(scene):
    editor = scene.sequence_editor
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def add_image_strip(scene, name: str, frames: list[Path], channel: int, start: int):
    """An image-sequence strip of ``frames`` (all in one folder)."""
    strip = strips_of(scene).new_image(name, str(frames[0]), channel, start, fit_method="FIT")
    for frame in frames[1:]:
        strip.elements.append(frame.name)
    return strip


@pytest.fixture
def empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def build_tiny_models(folder: Path, family: str) -> dict[str, str]:
    """Tiny random-weight models, written by the worker Python (this one may have no torch)."""
    result = subprocess.run(
        [worker_python(), "-m", "blender_unsample.engine", "tiny-models", str(folder), "--family", family],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"), "sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny_sdxl"), "sdxl")


@pytest.fixture
def addon(empty_scene, tiny_models, tmp_path):
    """The add-on enabled the way Blender enables it, set up for tiny models on the CPU."""
    import addon_utils  # importable only once bpy is

    addon_utils.enable(ADDON, default_set=True, handle_error=None)
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.cache_folder = str(tmp_path / "cache")
    prefs.device = "cpu"
    # Blender 5.0's tests use Blender's own Python (the default); 4.2's point at .venv's.
    prefs.worker_python = "" if worker_python() == sys.executable else worker_python()
    settings = bpy.context.scene.unsample
    settings.prompt = "an oil painting"
    settings.checkpoint = tiny_models["checkpoint"]
    settings.motion_module = tiny_models["motion_adapter"]
    settings.controlnet_model = tiny_models["controlnet"]
    settings.steps = 2
    settings.context, settings.overlap = 8, 2
    settings.resolution = "CUSTOM"
    settings.width, settings.height = 64, 40
    yield prefs
    from blender_unsample.addon.jobs.runner import RUNNER

    RUNNER.cancel()
    while RUNNER.tick():
        pass
    addon_utils.disable(ADDON, default_set=True)


def video_scene(scene, width=128, height=72, fps=24):
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.fps = fps
    scene.sequence_editor_create()
    return scene


def write_frames(folder: Path, count: int, size=(128, 72)) -> list[Path]:
    """PNG frames with motion (a bright square moving right over a gradient), written by Blender."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    ramp = np.linspace(0.1, 0.6, width, dtype=np.float32)
    paths = []
    for i in range(count):
        rgba = np.ones((height, width, 4), dtype=np.float32)
        rgba[..., 0], rgba[..., 1], rgba[..., 2] = ramp, ramp[::-1], 0.3
        x = (6 * i) % (width - 16)
        rgba[height // 3 : height // 3 + 16, x : x + 16, :3] = (1.0, 0.9, 0.2)
        image = bpy.data.images.new(f"frame{i}", width, height)
        image.pixels.foreach_set(rgba[::-1].ravel())  # Blender images start at the bottom row
        path = folder / f"src_{i:04d}.png"
        image.filepath_raw = str(path)
        image.file_format = "PNG"
        image.save()
        bpy.data.images.remove(image)
        paths.append(path)
    return paths


def write_movie(path: Path, frames: list[Path], fps: int = 24) -> Path:
    """Encode frames to an H.264 MP4 with Blender's own FFmpeg, from a scratch scene."""
    from blender_unsample.addon.compat import set_file_format

    scratch = bpy.data.scenes.new("movie-maker")
    video_scene(scratch, fps=fps)
    add_image_strip(scratch, "frames", frames, 1, 1)
    scratch.frame_start, scratch.frame_end = 1, len(frames)
    render = scratch.render
    set_file_format(render.image_settings, "FFMPEG")
    render.ffmpeg.format = "MPEG4"
    render.ffmpeg.codec = "H264"
    render.ffmpeg.constant_rate_factor = "HIGH"
    render.filepath = str(path)
    bpy.ops.render.render(animation=True, scene=scratch.name)
    bpy.data.scenes.remove(scratch)
    return next(path.parent.glob(path.name + "*"))


def image_pixels(path: Path) -> np.ndarray:
    image = bpy.data.images.load(str(path))
    pixels = np.empty(image.size[0] * image.size[1] * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    bpy.data.images.remove(image)
    return pixels


def add_modifier(scene, strip, name: str, kind: str):
    """A strip modifier; Blender 5.0 needs the scene in the context to add one (it crashes without)."""
    override = bpy.context.temp_override(scene=scene, sequencer_scene=scene) if bpy.app.version >= (5, 0, 0) else None
    with override or contextlib.nullcontext():
        return strip.modifiers.new(name, kind)


def rna_state(struct, depth: int = 8) -> dict:
    """Every property of ``struct`` and of what it holds (modifiers, transform, crop, colour
    settings, images, meta contents), as plain values; data-blocks by name. Selection is left
    out: a restyle selects its result, by design."""
    state = {}
    for prop in struct.bl_rna.properties:
        key = prop.identifier
        if key in {"rna_type", "select", "select_left_handle", "select_right_handle"}:
            continue
        value = getattr(struct, key)
        if prop.type == "POINTER":
            nested = value is not None and not isinstance(value, bpy.types.ID) and depth
            state[key] = rna_state(value, depth - 1) if nested else getattr(value, "name", None)
        elif prop.type == "COLLECTION":
            state[key] = [rna_state(item, depth - 1) for item in value] if depth else len(value)
        elif getattr(prop, "is_array", False):
            state[key] = tuple(value)
        else:
            state[key] = value
    return state


STRIP_STATE = ("name", "channel", "frame_start", "frame_final_start", "frame_final_duration", "mute", "select")


def snapshot(scene) -> dict[str, tuple]:
    return {s.name: tuple(getattr(s, p) for p in STRIP_STATE if p != "select") for s in strips_of(scene)}


def styled_strips(scene) -> list:
    return [s for s in strips_of(scene) if s.get("unsample_source")]


@pytest.fixture
def movie_strip(addon, tmp_path):
    scene = video_scene(bpy.context.scene)
    movie = write_movie(tmp_path / "clip.mp4", write_frames(tmp_path / "src", 14))
    strip = strips_of(scene).new_movie("Clip", str(movie), 2, 1, fit_method="FIT")
    strip.frame_offset_start = 2  # trimmed: the first two frames are not part of the edit
    strip.frame_offset_end = 1
    strip.select = True
    scene.sequence_editor.active_strip = strip
    return strip


@pytest.fixture
def image_strip(addon, tmp_path):
    scene = video_scene(bpy.context.scene)
    frames = write_frames(tmp_path / "images", 6)
    strip = add_image_strip(scene, "Shots", frames, 1, 30)
    strip.select = True
    scene.sequence_editor.active_strip = strip
    return strip


@pytest.fixture
def quick_worker(addon, tmp_path):
    """A stand-in worker that hands back the exported frames as its styled frames at once, for
    tests about what happens around a job rather than inside it."""
    script = tmp_path / "quick-worker"
    script.write_text(
        f"""#!{sys.executable}
import json, shutil, sys
from pathlib import Path
if "doctor" in sys.argv:  # the panel's check of the worker Python: it has what a worker needs
    print(json.dumps({{"python": sys.argv[0], "packages": {{"torch": "2.13.0"}}, "missing": [], "devices": ["cpu"]}}))
    sys.exit(0)
job = json.loads(Path(sys.argv[sys.argv.index("--job") + 1]).read_text(encoding="utf-8"))
out = Path(job["out"])
out.mkdir(parents=True, exist_ok=True)
frames = sorted(Path(job["frames"]).glob("*.png"))
for frame in frames:
    shutil.copy(frame, out / frame.name)
print(json.dumps({{"type": "done", "frames": len(frames), "out": str(out), "seconds": 0.0}}), flush=True)
""",
        encoding="utf-8",
    )
    script.chmod(0o755)
    addon.worker_python = str(script)
    return script


def run_interactively(scene, on_tick=None) -> list[float]:
    """Drive a queued batch the way the modal operator does: one tick per timer event."""
    from blender_unsample.addon.jobs.runner import RUNNER

    durations = []
    while True:
        started = time.perf_counter()
        busy = RUNNER.tick()
        durations.append(time.perf_counter() - started)
        if on_tick:
            on_tick()
        if not busy:
            return durations
        time.sleep(0.01)


def poll_message(operator, context) -> tuple[bool, str]:
    """An operator's poll result and the message it set for the greyed-out button's tooltip."""
    messages = []
    original = operator.poll_message_set
    operator.poll_message_set = classmethod(lambda cls, text: messages.append(text))
    try:
        return operator.poll(context), (messages or [""])[-1]
    finally:
        operator.poll_message_set = original
