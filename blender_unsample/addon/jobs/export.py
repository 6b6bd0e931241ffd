"""Render one strip's own pixels, and nothing else, to numbered PNGs."""

from __future__ import annotations

import errno
import os
import shutil
import time
from pathlib import Path

import bpy
import numpy as np

from ..compat import scene_fcurves, set_file_format, top_level_strips, use_own_action

EXPORT_SCENE_NAME = ".unsample-export"
PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every PNG file
LOW_SPACE = 64 * 2**20  # bytes free below which a frame Blender failed to write means a full disk
# How a strip blends with the channels below it: the styled strip applies these (strips.add_result_strip).
BLEND_SETTINGS = ("blend_type", "blend_alpha")


class FrameExporter:
    """Renders frames ``frames`` (scene frame numbers) of ``strip`` to ``folder``, a few per call.

    It works on a temporary copy of the scene in which every other top-level strip is muted, so
    the strip's trims, transforms, modifiers and (for meta strips) contents render exactly as in
    the timeline while other channels stay out. A frame keeps the strip's transparency (an RGBA
    PNG; RGB where the frame is opaque) but not its blend mode and opacity, which the styled
    strip applies. The user's scene is never modified.
    """

    def __init__(
        self,
        scene: bpy.types.Scene,
        strip: bpy.types.Sequence,
        frames: range,
        folder: Path,
        size: tuple[int, int],
    ) -> None:
        self.frames = frames
        self.folder = folder
        self.paths: list[Path] = []
        folder.mkdir(parents=True, exist_ok=True)
        self._copy = scene.copy()
        self._copy.name = EXPORT_SCENE_NAME
        self._action: bpy.types.Action | None = None  # the copy's own action, if it needs one
        _isolate(self._copy, strip.name)
        self._blend_alone(top_level_strips(self._copy.sequence_editor)[strip.name])
        _set_output(self._copy, scene, size)
        self.size = (
            self._copy.render.resolution_x * self._copy.render.resolution_percentage // 100,
            self._copy.render.resolution_y * self._copy.render.resolution_percentage // 100,
        )

    @property
    def done(self) -> bool:
        return len(self.paths) == len(self.frames)

    def step(self, budget: float) -> None:
        """Render one frame, then more while the next one (timed like the last) still fits in
        ``budget`` seconds: a call overruns the budget by at most one frame's render."""
        started = time.perf_counter()
        while not self.done:
            frame_started = time.perf_counter()
            index = len(self.paths)
            path = self.folder / f"frame_{index:06d}.png"
            # Written under another name, then renamed: a frame is there whole or not at all, even
            # if the process rendering it is killed.
            partial = path.with_name(f".partial-{path.name}")
            self._show(self.frames[index])
            self._render(partial, path)
            os.replace(partial, path)
            self.paths.append(path)
            now = time.perf_counter()
            if now - started + (now - frame_started) > budget:
                return

    def close(self) -> None:
        """Remove the temporary scene; safe to call more than once."""
        if self._copy is not None:
            bpy.data.scenes.remove(self._copy)
            self._copy = None
        if self._action is not None:
            bpy.data.actions.remove(self._action)
            self._action = None

    def _blend_alone(self, strip: bpy.types.Sequence) -> None:
        """Render ``strip`` as its own pixels and alpha: Alpha Over at opacity 1.0 over nothing.
        Its own blend mode over nothing would change its colours (Multiply over transparent black
        is black), and its opacity would be applied twice, here and by the styled strip."""
        strip.blend_type, strip.blend_alpha = "ALPHA_OVER", 1.0
        paths = {strip.path_from_id(name) for name in BLEND_SETTINGS}
        if any(curve.data_path in paths for curve in scene_fcurves(self._copy)):
            # Animated (a fade): its curves are muted, in a copy of the action the user's scene keeps.
            self._action = use_own_action(self._copy)
            for curve in scene_fcurves(self._copy):
                curve.mute = curve.mute or curve.data_path in paths

    def _show(self, frame: int) -> None:
        self._copy.frame_current = frame
        if self._copy.frame_current != frame:  # clamped: it would silently render another frame
            raise ValueError(
                f"this Blender cannot show frame {frame}: allow negative frames (Preferences > Animation > "
                "Allow Negative Frames)"
            )

    def _render(self, partial: Path, path: Path) -> None:
        """Render the copy's frame to ``partial``, whole, with alpha only where it has transparency."""
        self._copy.render.filepath = str(partial)
        # The copy as the context's scene too: otherwise the sequencer renders the frame at the
        # context scene's playhead, whatever the copy's frame is.
        with bpy.context.temp_override(scene=self._copy):
            bpy.ops.render.render(write_still=True, scene=self._copy.name)
        _check_written(partial, path)
        if _opaque(partial):
            # Written again without alpha: the worker warns about frames that carry one.
            settings = self._copy.render.image_settings
            settings.color_mode = "RGB"
            try:
                render_result = next(image for image in bpy.data.images if image.type == "RENDER_RESULT")
                render_result.save_render(str(partial), scene=self._copy)
            finally:
                settings.color_mode = "RGBA"
            _check_written(partial, path)


def _check_written(partial: Path, path: Path) -> None:
    if not _whole_png(partial):  # Blender reports "Saved" even when the disk filled up
        partial.unlink(missing_ok=True)
        raise _not_written(path)


def _opaque(path: Path) -> bool:
    image = bpy.data.images.load(str(path))
    try:
        pixels = np.empty(image.size[0] * image.size[1] * image.channels, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        return image.channels < 4 or bool((pixels[3 :: image.channels] == 1.0).all())
    finally:
        bpy.data.images.remove(image)


def _whole_png(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            file.seek(-len(PNG_END), os.SEEK_END)
            return file.read(len(PNG_END)) == PNG_END
    except OSError:  # not there, or shorter than a PNG's last chunk
        return False


def _not_written(path: Path) -> OSError:
    if shutil.disk_usage(path.parent).free < LOW_SPACE:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(f"Blender did not write a whole frame to {path}")


def _isolate(copy: bpy.types.Scene, strip_name: str) -> None:
    editor = copy.sequence_editor
    for strip in top_level_strips(editor):
        strip.mute = strip.name != strip_name
    # A muted channel hides its strips from the render as a muted strip is hidden.
    editor.channels[top_level_strips(editor)[strip_name].channel].mute = False


def _set_output(copy: bpy.types.Scene, scene: bpy.types.Scene, size: tuple[int, int]) -> None:
    render = copy.render
    render.use_sequencer = True
    render.use_compositing = False
    # Scale the whole frame (not the resolution, which would move the strips) to near the model size.
    render.resolution_percentage = max(1, min(400, round(100 * size[0] / scene.render.resolution_x)))
    settings = render.image_settings
    set_file_format(settings, "PNG")
    settings.color_mode = "RGBA"
    settings.color_depth = "8"
    settings.compression = 15  # fast: these files live only as long as the job
    # No metadata (dates, file names) in the frames: the same pixels make the same files.
    for prop in render.bl_rna.properties:
        if prop.identifier.startswith("use_stamp") and not prop.is_readonly:
            setattr(render, prop.identifier, False)
    # The strip's own pixels: no view transform or look baked into the exported frames.
    copy.view_settings.view_transform = "Standard"
    copy.view_settings.look = "None"
    copy.view_settings.exposure = 0.0
    copy.view_settings.gamma = 1.0
