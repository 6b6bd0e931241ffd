"""Sequencer strips: which can be restyled, and adding the styled result above its source."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import bpy

from .compat import STRIP_TYPE, all_strips, meta_members, scene_fcurves, top_level_strips

RESTYLABLE_TYPES = {"MOVIE", "IMAGE", "SCENE", "META"}
MAX_CHANNEL = 128
RESULT_TAG = "unsample_source"  # custom property on a styled strip: its source's name
PREVIEW_TAG = "unsample_preview"
SETTINGS_TAG = "unsample_settings"


# What a fingerprint leaves out: where the strip is (checked on its own), and what only the
# timeline's UI shows. The export renders the strip unmuted wherever it sits, so those don't count.
PLACE = frozenset({"name", "mute", "channel", "frame_final_start", "frame_final_end", "frame_final_duration"})
UI_ONLY = frozenset({
    "rna_type", "select", "select_left_handle", "select_right_handle", "lock", "color_tag", "show_expanded",
    "show_retiming_keys", "is_active", "open_mask_input_panel", "use_proxy", "proxy", "use_cache_raw",
    "use_cache_preprocessed", "use_cache_composite", "override_cache_settings",
})  # fmt: skip
NESTING = 8  # deep enough for a curve point in a modifier of a strip inside a meta strip


@dataclass(frozen=True)
class StripRef:
    """A source strip as its frames were exported: where it was, and a fingerprint of what it
    rendered, to find it again and notice moves and edits."""

    scene: str
    name: str
    start: int  # first visible frame
    duration: int  # visible frames
    channel: int
    fingerprint: str

    @classmethod
    def of(cls, scene: bpy.types.Scene, strip: bpy.types.Sequence) -> StripRef:
        place = (strip.frame_final_start, strip.frame_final_duration, strip.channel)
        return cls(scene.name, strip.name, *place, fingerprint(strip))

    def find(self) -> tuple[bpy.types.Scene, bpy.types.Sequence]:
        """The scene and strip, in the same place as when the job started; else LookupError
        saying what changed."""
        scene = bpy.data.scenes.get(self.scene)
        if scene is None:
            raise LookupError(f"its scene '{self.scene}' was renamed or deleted")
        editor = scene.sequence_editor
        strip = (all_strips(editor).get(self.name) or self._renamed(editor)) if editor else None
        if strip is None:
            raise LookupError("the strip was renamed or deleted")
        change = self._change(strip)
        if change:
            raise LookupError(f"the strip was {change}")
        return scene, strip

    def edited(self, strip: bpy.types.Sequence) -> bool:
        """Whether ``strip`` would now render differently from when this was taken."""
        return fingerprint(strip) != self.fingerprint

    def _renamed(self, editor: bpy.types.SequenceEditor) -> bpy.types.Sequence | None:
        # Only one strip fits in a channel over a frame: the same place and content is the same strip.
        for strip in top_level_strips(editor):
            place = (strip.frame_final_start, strip.frame_final_duration, strip.channel)
            if place == (self.start, self.duration, self.channel):
                return strip if fingerprint(strip) == self.fingerprint else None
        return None

    def _change(self, strip: bpy.types.Sequence) -> str | None:
        if strip.parent_meta() is not None:
            return "moved into a meta strip"
        start, duration = strip.frame_final_start, strip.frame_final_duration
        changes = []
        if strip.channel != self.channel:
            changes.append(f"moved from channel {self.channel} to {strip.channel}")
        if duration != self.duration:
            was, now = _span(self.start, self.duration), _span(start, duration)
            changes.append(f"trimmed from frames {was} to {now}")
        elif start != self.start:
            changes.append(f"moved from frame {self.start} to {start}")
        return " and ".join(changes) or None


def _span(start: int, duration: int) -> str:
    return f"{start}-{start + duration - 1}"


def fingerprint(strip: bpy.types.Sequence) -> str:
    """A digest of what exporting ``strip`` renders: its settings, media, modifiers, transform,
    crop, colour and, for a meta strip, its contents, nested values included. Animated values
    count by their keyframes, not by the value at the playhead, so scrubbing is no edit. Other
    data-blocks count by name (a scene strip's scene, a mask): edits inside them are not seen."""
    animated = _animation(strip.id_data)
    values: list[tuple[str, object]] = []
    _collect(strip, PLACE | UI_ONLY, animated, "", values, NESTING)
    return hashlib.sha1(repr(values).encode()).hexdigest()


def _collect(
    struct: bpy.types.bpy_struct,
    skip: frozenset[str],
    animated: dict[str, str],
    label: str,
    values: list[tuple[str, object]],
    depth: int,
) -> None:
    base = _path(struct) if animated else ""
    for prop in struct.bl_rna.properties:
        key = prop.identifier
        if key in skip:
            continue
        if prop.type == "POINTER":
            value = getattr(struct, key)
            if value is None or isinstance(value, (bpy.types.ID, STRIP_TYPE)):  # another data-block or strip
                values.append((label + key, getattr(value, "name", None)))
            elif depth:
                _collect(value, UI_ONLY, animated, f"{label}{key}.", values, depth - 1)
        elif prop.type == "COLLECTION":
            for index, item in enumerate(getattr(struct, key) if depth else ()):
                _collect(item, UI_ONLY, animated, f"{label}{key}[{index}].", values, depth - 1)
        elif prop.is_readonly:
            continue  # filled in by Blender as it reads the media (sizes, frame rate)
        elif f"{base}.{key}" in animated:
            values.append((label + key, animated[f"{base}.{key}"]))
        else:
            values.append((label + key, _plain(prop, getattr(struct, key))))


def _plain(prop: bpy.types.Property, value: object) -> object:
    if getattr(prop, "is_array", False):
        return tuple(value)
    if getattr(prop, "is_enum_flag", False):
        return tuple(sorted(value))
    if prop.type in {"INT", "FLOAT"}:
        # Blender may store a value out of range until it first uses it (4.2 stores a new strip's
        # strobe as 0, later 1): both render the same.
        return min(max(value, prop.hard_min), prop.hard_max)
    return value


def _path(struct: bpy.types.bpy_struct) -> str:
    try:
        return struct.path_from_id()
    except ValueError:  # a struct Blender cannot name a path to: never animated
        return ""


def _animation(scene: bpy.types.Scene) -> dict[str, str]:
    """Each animated property's data path, with its keyframes or driver as text."""
    animated: dict[str, list[str]] = {}
    for curve in scene_fcurves(scene):
        animated.setdefault(curve.data_path, []).append(f"[{curve.array_index}] {_curve_text(curve)}")
    return {path: " ".join(sorted(texts)) for path, texts in animated.items()}


def _curve_text(curve: bpy.types.FCurve) -> str:
    points = curve.keyframe_points
    keys = [(tuple(k.co), tuple(k.handle_left), tuple(k.handle_right), k.interpolation) for k in points]
    driver = curve.driver
    if driver is None:
        return f"{curve.extrapolation} {keys}"
    variables = [(v.name, [(t.id and t.id.name, t.data_path) for t in v.targets]) for v in driver.variables]
    return f"driver {driver.type} {driver.expression} {variables} {keys}"


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
    if strip.type == "META" and len(meta_members(strip)) == 0:
        return f"'{strip.name}' is an empty meta strip: it holds no strips to restyle"
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
