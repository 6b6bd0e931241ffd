"""A fingerprint of what exporting a strip renders, to notice a source edited while its job runs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import bpy

from ..compat import STRIP_TYPE, meta_members, scene_fcurves

# What a fingerprint leaves out: where the strip is (checked on its own), and what only the
# timeline's UI shows. The export renders the strip unmuted wherever it sits, so those don't count.
PLACE = frozenset({"name", "mute", "channel", "frame_final_start", "frame_final_end", "frame_final_duration"})
UI_ONLY = frozenset({
    "rna_type", "select", "select_left_handle", "select_right_handle", "lock", "color_tag", "show_expanded",
    "show_retiming_keys", "is_active", "open_mask_input_panel", "use_proxy", "proxy", "use_cache_raw",
    "use_cache_preprocessed", "use_cache_composite", "override_cache_settings",
})  # fmt: skip
NESTING = 8  # deep enough for a curve point in a modifier of a strip inside a meta strip


def fingerprint(strip: bpy.types.Sequence) -> str:
    """A digest of what exporting ``strip`` renders: its settings, media, modifiers, transform,
    crop, colour and, for a meta strip, its contents, nested values included; and the size and
    time of each media file, so a file replaced on disk under the same name counts. Animated values
    count by their keyframes, not by the value at the playhead, so scrubbing is no edit. Other
    data-blocks count by name (a scene strip's scene, a mask): edits inside them are not seen."""
    animated = _animation(strip.id_data)
    values: list[tuple[str, object]] = []
    _collect(strip, PLACE | UI_ONLY, animated, "", values, NESTING)
    values.append(("media files", _media_stamps(strip)))
    return hashlib.sha1(repr(values).encode()).hexdigest()


def media_files(strip: bpy.types.Sequence) -> list[Path]:
    """The files a movie or image strip reads its frames from (none for other kinds of strip)."""
    library = strip.id_data.library
    if strip.type == "MOVIE":
        return [Path(bpy.path.abspath(strip.filepath, library=library))]
    if strip.type == "IMAGE":
        folder = Path(bpy.path.abspath(strip.directory, library=library))
        return [folder / element.filename for element in strip.elements]
    return []


def _media_stamps(strip: bpy.types.Sequence) -> list[tuple[int, int] | None]:
    """Size and modification time of each file ``strip`` reads (None for one that is missing)."""
    if strip.type == "META":
        return [stamp for member in meta_members(strip) for stamp in _media_stamps(member)]
    return [_stamp(path) for path in media_files(strip)]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


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
