"""Sequencer strips: which can be restyled, and adding the styled result above its source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy

from .compat import all_strips, top_level_strips

RESTYLABLE_TYPES = {"MOVIE", "IMAGE", "SCENE", "META"}
MAX_CHANNEL = 128
RESULT_TAG = "unsample_source"  # custom property on a styled strip: its source's name
PREVIEW_TAG = "unsample_preview"
SETTINGS_TAG = "unsample_settings"


@dataclass(frozen=True)
class StripRef:
    """Where a source strip was when its job started, to find it again and notice edits."""

    scene: str
    name: str
    start: int  # first visible frame
    duration: int  # visible frames
    channel: int

    @classmethod
    def of(cls, scene: bpy.types.Scene, strip: bpy.types.Sequence) -> StripRef:
        return cls(scene.name, strip.name, strip.frame_final_start, strip.frame_final_duration, strip.channel)

    def find(self) -> tuple[bpy.types.Scene, bpy.types.Sequence]:
        """The scene and strip, unchanged since the job started; else LookupError saying what changed."""
        scene = bpy.data.scenes.get(self.scene)
        editor = scene.sequence_editor if scene else None
        strip = all_strips(editor).get(self.name) if editor else None
        if strip is None:
            raise LookupError(f"strip '{self.name}' is gone from scene '{self.scene}'")
        if (strip.frame_final_start, strip.frame_final_duration) != (self.start, self.duration):
            raise LookupError(f"strip '{self.name}' was moved or trimmed while it was being restyled")
        return scene, strip


def restylable_reason(strip: bpy.types.Sequence | None) -> str | None:
    """Why ``strip`` cannot be restyled, or None if it can."""
    if strip is None:
        return "No strip selected"
    if strip.type not in RESTYLABLE_TYPES:
        return f"'{strip.name}' is a {strip.type.lower()} strip: only movie, image, scene and meta strips have pixels"
    if strip.parent_meta() is not None:
        return f"'{strip.name}' is inside a meta strip: restyle the meta strip itself"
    if strip.frame_final_duration < 1:
        return f"'{strip.name}' has no frames"
    missing = _missing_media(strip)
    if missing:
        return f"'{strip.name}' is missing its media: {missing}"
    return None


def _missing_media(strip: bpy.types.Sequence) -> str | None:
    if strip.type == "MOVIE":
        path = Path(bpy.path.abspath(strip.filepath))
        return None if path.is_file() else str(path)
    if strip.type == "IMAGE":
        folder = Path(bpy.path.abspath(strip.directory))
        missing = [e.filename for e in strip.elements if not (folder / e.filename).is_file()]
        return f"{len(missing)} images in {folder}, e.g. {missing[0]}" if missing else None
    if strip.type == "SCENE":
        return None if strip.scene is not None else "no scene"
    return None


def has_strips(scene: bpy.types.Scene) -> bool:
    editor = scene.sequence_editor
    return editor is not None and len(top_level_strips(editor)) > 0


def strips_to_restyle(scene: bpy.types.Scene) -> list[bpy.types.Sequence]:
    """The selected strips in timeline order, or the active one if none is selected."""
    editor = scene.sequence_editor
    if editor is None:
        return []
    selected = [s for s in top_level_strips(editor) if s.select]
    if not selected and editor.active_strip is not None:
        selected = [editor.active_strip]
    return sorted(selected, key=lambda s: (s.frame_final_start, s.channel))


def free_channel_above(editor: bpy.types.SequenceEditor, channel: int, start: int, end: int) -> int:
    """The lowest channel above ``channel`` with nothing between frames ``start`` and ``end``."""
    taken = {s.channel for s in top_level_strips(editor) if s.frame_final_start < end and s.frame_final_end > start}
    for candidate in range(channel + 1, MAX_CHANNEL + 1):
        if candidate not in taken:
            return candidate
    raise LookupError(f"no free channel above {channel} for frames {start}-{end}")


def add_result_strip(
    scene: bpy.types.Scene,
    source: bpy.types.Sequence,
    frames: list[Path],
    start: int,
    settings_json: str,
    preview: bool = False,
) -> bpy.types.Sequence:
    """An image strip of ``frames`` from frame ``start`` on the first free channel above
    ``source``. The source strip is not touched."""
    editor = scene.sequence_editor
    channel = free_channel_above(editor, source.channel, start, start + len(frames))
    suffix = "Unsample preview" if preview else "Unsample"
    strip = top_level_strips(editor).new_image(
        name=f"{source.name} ({suffix})",
        filepath=str(frames[0]),
        channel=channel,
        frame_start=start,
        fit_method="FIT",
    )
    for frame in frames[1:]:
        strip.elements.append(frame.name)
    strip[RESULT_TAG] = source.name
    strip[SETTINGS_TAG] = settings_json
    if preview:
        strip[PREVIEW_TAG] = True
    return strip


def select_only(scene: bpy.types.Scene, names: set[str], active: str) -> None:
    """Select exactly the strips named, make ``active`` the active one."""
    editor = scene.sequence_editor
    for strip in all_strips(editor):
        strip.select = strip.name in names
    editor.active_strip = all_strips(editor).get(active)


def remove_previews(scene: bpy.types.Scene, source_name: str) -> int:
    """Delete the preview strips made from ``source_name``; returns how many."""
    editor = scene.sequence_editor
    previews = [s for s in top_level_strips(editor) if s.get(PREVIEW_TAG) and s.get(RESULT_TAG) == source_name]
    for strip in previews:
        top_level_strips(editor).remove(strip)
    return len(previews)
