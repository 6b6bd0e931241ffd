"""Sequencer strips: which can be restyled, and adding the styled result above its source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy

from ..compat import all_strips, meta_members, top_level_strips
from .fingerprint import fingerprint, media_files

RESTYLABLE_TYPES = {"MOVIE", "IMAGE", "SCENE", "META"}
MAX_CHANNEL = 128
RESULT_TAG = "unsample_source"  # custom property on a styled strip: its source's name
PREVIEW_TAG = "unsample_preview"
SETTINGS_TAG = "unsample_settings"


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
    if strip.type == "SCENE":
        return None if strip.scene is not None else "no scene"
    missing = [path for path in media_files(strip) if not path.is_file()]
    if not missing:
        return None
    if strip.type == "MOVIE":
        return str(missing[0])
    return f"{len(missing)} images in {missing[0].parent}, e.g. {missing[0].name}"


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


def free_channel_above(
    editor: bpy.types.SequenceEditor, channel: int, start: int, end: int, ignore: frozenset[str] = frozenset()
) -> int:
    """The lowest channel above ``channel``, neither locked nor muted, with nothing on it from frame
    ``start`` up to ``end`` (not included, as ``frame_final_end``); strips named in ``ignore`` do not
    count. Else LookupError, in words."""
    channel_found = _free_channel(editor, channel, start, end, ignore)
    if channel_found is None:
        last = end - 1
        raise LookupError(f"no free channel above channel {channel} for frames {start}-{last}")
    return channel_found


def _free_channel(
    editor: bpy.types.SequenceEditor, channel: int, start: int, end: int, ignore: frozenset[str]
) -> int | None:
    taken = {
        s.channel
        for s in top_level_strips(editor)
        if s.name not in ignore and s.frame_final_start < end and s.frame_final_end > start
    }
    for candidate in range(channel + 1, MAX_CHANNEL + 1):
        # A strip put in a locked channel could not be moved or deleted until the channel is unlocked;
        # in a muted one it would not be seen.
        if candidate not in taken and not editor.channels[candidate].lock and not editor.channels[candidate].mute:
            return candidate
    return None


def channel_problem(scene: bpy.types.Scene, strip: bpy.types.Sequence, frames: range) -> str | None:
    """Why no styled strip of ``strip``'s ``frames`` would find a channel above it, and what to do,
    or None. Its own preview strips do not count: the result replaces them."""
    editor = scene.sequence_editor
    previews = frozenset(
        s.name for s in top_level_strips(editor) if s.get(PREVIEW_TAG) and s.get(RESULT_TAG) == strip.name
    )
    if _free_channel(editor, strip.channel, frames.start, frames.stop, previews) is not None:
        return None
    if strip.channel >= MAX_CHANNEL:
        last = f"'{strip.name}' is on channel {MAX_CHANNEL}, the last"
        return f"{last}: no channel above it can take the styled strip; move it down"
    above = range(strip.channel + 1, MAX_CHANNEL + 1)
    kinds = ["taken"]
    kinds += ["locked"] if any(editor.channels[c].lock for c in above) else []
    kinds += ["muted"] if any(editor.channels[c].mute for c in above) else []
    fix = {"locked": "unlock", "muted": "unmute"}
    why = " or ".join(kinds)
    how = "free" + "".join(f" or {fix[kind]}" for kind in kinds[1:])
    return (
        f"'{strip.name}' has no free channel above it over frames {frames.start}-{frames.stop - 1} "
        f"(channels {above.start}-{MAX_CHANNEL} are {why}); {how} one"
    )


def add_result_strip(
    scene: bpy.types.Scene,
    source: bpy.types.Sequence,
    frames: list[Path],
    start: int,
    settings_json: str,
    preview: bool = False,
) -> bpy.types.Sequence:
    """An image strip of ``frames`` from frame ``start`` on the first free channel above
    ``source``, blending with the channels below as ``source`` does. The source strip is not
    touched."""
    from ..compat import copy_animation, remove_animation

    editor = scene.sequence_editor
    channel = free_channel_above(editor, source.channel, start, start + len(frames))
    suffix = "Unsample preview" if preview else "Unsample"
    strip = top_level_strips(editor).new_image(
        name=f"{source.name} ({suffix})",
        filepath=str(frames[0]),
        channel=channel,
        frame_start=start,
        # Each frame is the whole output frame with the source's transform and crop already in
        # it: stretched back over the whole frame, not fitted (which can leave a seam) or moved.
        fit_method="STRETCH",
    )
    for frame in frames[1:]:
        strip.elements.append(frame.name)
    # Drivers of a deleted strip of the same name outlive it and would drive this one.
    remove_animation(scene, strip.path_from_id())
    # The frames carry the source's alpha but not its blend mode or opacity (the export renders
    # it alone at Alpha Over 1.0): the result applies them, keyframes and drivers included.
    for name in ("blend_type", "blend_alpha"):
        setattr(strip, name, getattr(source, name))
        copy_animation(scene, source.path_from_id(name), strip.path_from_id(name))
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
