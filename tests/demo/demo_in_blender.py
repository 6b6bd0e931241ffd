"""The main job, end to end in headless Blender; `python3 build.py demo` runs this with .venv's Python.

    .venv/bin/python tests/demo/demo_in_blender.py --out demo_out [--tiny]

1. Draws a short clip with real motion (a camera pan over hills, a bouncing ball, a spinning
   square) and encodes it to MP4 with Blender's own FFmpeg.
2. Opens it in Blender's sequencer as a movie strip and runs the extension's Restyle operator.
3. Writes OUT/styled/ (the styled frames), OUT/demo.blend (both strips) and OUT/contact_sheet.png.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import bpy
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
ADDON = "blender_unsample"

PROMPT = "an oil painting of rolling hills at sunset, thick brush strokes, vivid colours"
# What the clip shows: the unsample pass's prompt, which stays put while styles change.
SOURCE = "green hills under a blue sky, a red ball bouncing, a spinning square, camera panning right"
CLIP_SIZE = (640, 360)


def draw_frame(index: int, size: tuple[int, int]) -> Image.Image:
    """One frame: the camera pans right over two layers of hills while a ball bounces and a square spins."""
    width, height = size
    pan = 5.0 * index
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (1 - rows) * np.array([40, 70, 140]) + rows * np.array([250, 170, 110])
    pixels = np.broadcast_to(sky, (height, width, 3)).copy()
    x = np.arange(width)
    for speed, base, amplitude, colour in ((0.4, 0.55, 0.08, (70, 90, 120)), (1.0, 0.72, 0.07, (60, 130, 60))):
        ridge = height * (base + amplitude * np.sin((x + pan * speed) / 55.0) + 0.03 * np.sin((x + pan * speed) / 13.0))
        pixels[np.arange(height)[:, None] > ridge[None, :]] = colour
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    sun = (width * 0.75 - pan * 0.1, height * 0.25)
    draw.ellipse((sun[0] - 28, sun[1] - 28, sun[0] + 28, sun[1] + 28), fill=(255, 220, 120))
    ball_x = 40 + 9 * index
    ball_y = height * 0.75 - abs(math.sin(index / 4.0)) * height * 0.35
    draw.ellipse((ball_x - 22, ball_y - 22, ball_x + 22, ball_y + 22), fill=(210, 40, 40))
    angle = index / 6.0
    centre = (width * 0.3, height * 0.45)
    corners = [
        (centre[0] + 40 * math.cos(angle + k * math.pi / 2), centre[1] + 40 * math.sin(angle + k * math.pi / 2))
        for k in range(4)
    ]
    draw.polygon(corners, fill=(240, 240, 230))
    return image


def make_clip(folder: Path, frames: int) -> Path:
    """PNG frames, then an H.264 MP4 encoded by Blender from a scratch scene."""
    from blender_unsample.addon.compat import set_file_format, top_level_strips

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(frames):
        path = folder / f"clip_{index:04d}.png"
        draw_frame(index, CLIP_SIZE).save(path)
        paths.append(path)
    scratch = bpy.data.scenes.new("clip-encoder")
    configure_scene(scratch, frames)
    strip = top_level_strips(scratch.sequence_editor).new_image("frames", str(paths[0]), 1, 1, fit_method="FIT")
    for path in paths[1:]:
        strip.elements.append(path.name)
    set_file_format(scratch.render.image_settings, "FFMPEG")
    scratch.render.ffmpeg.format = "MPEG4"
    scratch.render.ffmpeg.codec = "H264"
    scratch.render.ffmpeg.constant_rate_factor = "HIGH"
    scratch.render.filepath = str(folder.parent / "clip.mp4")
    scratch.render.use_file_extension = False
    bpy.ops.render.render(animation=True, scene=scratch.name)
    bpy.data.scenes.remove(scratch)
    return folder.parent / "clip.mp4"


def configure_scene(scene: bpy.types.Scene, frames: int) -> None:
    scene.render.resolution_x, scene.render.resolution_y = CLIP_SIZE
    scene.render.resolution_percentage = 100
    scene.render.fps = 24
    scene.frame_start, scene.frame_end = 1, frames
    scene.sequence_editor_create()


def enable_addon(out: Path, tiny: bool) -> None:
    import addon_utils

    addon_utils.enable(ADDON, default_set=True, handle_error=None)
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.cache_folder = str(out / "work")
    if not tiny:
        # The demo was asked to fetch the default models: let Blender go online for it.
        bpy.context.preferences.system.use_online_access = True
        prefs.allow_downloads = True


def restyle(scene: bpy.types.Scene, strip: bpy.types.Sequence, tiny_models: object) -> bpy.types.Sequence:
    settings = scene.unsample
    settings.prompt = PROMPT
    settings.unsample_prompt = SOURCE
    if tiny_models is not None:
        settings.checkpoint = str(tiny_models.checkpoint)
        settings.motion_module = str(tiny_models.motion_adapter)
        settings.controlnet_model = str(tiny_models.controlnet)
        settings.steps = 4
        settings.resolution, settings.width, settings.height = "CUSTOM", 256, 144
    strip.select = True
    scene.sequence_editor.active_strip = strip
    started = time.monotonic()
    bpy.ops.sequencer.unsample_restyle()
    print(f"demo: restyled in {time.monotonic() - started:.0f} s")
    return scene.sequence_editor.active_strip


def contact_sheet(sources: list[Path], styled: list[Path], path: Path, note: str) -> None:
    """Six evenly spaced frames: the source above, the styled result below."""
    picks = [round(i * (len(sources) - 1) / 5) for i in range(6)]
    thumb = (256, 144)
    label_height = 28
    sheet = Image.new("RGB", (thumb[0] * 6, 2 * (thumb[1] + label_height) + label_height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for row, (title, frames) in enumerate((("source", sources), ("styled", styled))):
        top = row * (thumb[1] + label_height)
        draw.text((8, top + 8), title, fill=(230, 230, 230))
        for column, index in enumerate(picks):
            with Image.open(frames[index]) as frame:
                sheet.paste(frame.convert("RGB").resize(thumb), (column * thumb[0], top + label_height))
            draw.text((column * thumb[0] + 8, top + label_height + 6), f"frame {index + 1}", fill=(255, 255, 255))
    draw.text((8, sheet.height - label_height + 8), note, fill=(255, 200, 80))
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo_out")
    parser.add_argument("--tiny", action="store_true", help="random-weight tiny models, offline, on the CPU")
    parser.add_argument("--frames", type=int, default=0, help="clip length (default: 24 tiny, 48 otherwise)")
    args = parser.parse_args()
    out = args.out.resolve()
    frames = args.frames or (24 if args.tiny else 48)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.save_version = 0  # no demo.blend1 next to demo.blend
    enable_addon(out, args.tiny)
    scene = bpy.context.scene
    configure_scene(scene, frames)
    clip = make_clip(out / "work" / "clip_frames", frames)
    from blender_unsample.addon.compat import top_level_strips

    source = top_level_strips(scene.sequence_editor).new_movie("Clip", str(clip), 1, 1, fit_method="FIT")
    print(f"demo: {frames}-frame clip at {CLIP_SIZE[0]}x{CLIP_SIZE[1]} in {clip}")

    tiny_models = None
    if args.tiny:
        from blender_unsample.engine.tiny_models import build_tiny_models

        tiny_models = build_tiny_models(out / "work" / "models")
    styled = restyle(scene, source, tiny_models)
    if styled is None or styled.get("unsample_source") != "Clip":
        sys.exit("demo: the restyle did not add a strip; see the messages above")

    # Keep the styled frames next to the .blend, and point the strip at them there.
    styled_dir = out / "styled"
    styled_dir.mkdir()
    folder = Path(bpy.path.abspath(styled.directory))
    for element in styled.elements:
        shutil.copy2(folder / element.filename, styled_dir / element.filename)
    styled.directory = str(styled_dir) + "/"
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "demo.blend"))
    bpy.ops.file.make_paths_relative()  # the folder can move as a whole
    bpy.ops.wm.save_mainfile()

    note = (
        "tiny random-weight models: the styled frames are noise from untrained weights, not a style"
        if args.tiny
        else f"prompt: {PROMPT}"
    )
    styled_frames = [styled_dir / e.filename for e in styled.elements]
    contact_sheet(sorted((out / "work" / "clip_frames").glob("*.png")), styled_frames, out / "contact_sheet.png", note)
    print(f"demo: wrote {styled_dir} ({len(styled_frames)} frames), {out / 'demo.blend'}, {out / 'contact_sheet.png'}")
    if args.tiny:
        print("demo: --tiny used random-weight models; the pictures are noise, not a style.")


if __name__ == "__main__":
    main()
