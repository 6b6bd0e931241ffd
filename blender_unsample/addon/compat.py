"""The one place that knows how the sequencer API differs between Blender 4.2 LTS and 5.3.

Blender 4.4 renamed ``Sequence`` to ``Strip`` and 5.0 dropped ``sequence_editor.sequences`` (5.1 to 5.3,
on Python 3.13, brought nothing new for the add-on: the whole Blender suite passes in 5.3);
everything else in the add-on goes through these helpers.
"""

from __future__ import annotations

import bpy

STRIP_TYPE = getattr(bpy.types, "Strip", None) or bpy.types.Sequence
_NEW_API = hasattr(bpy.types.SequenceEditor, "bl_rna") and "strips" in bpy.types.SequenceEditor.bl_rna.properties


def top_level_strips(editor: bpy.types.SequenceEditor) -> bpy.types.bpy_prop_collection:
    """The collection new strips are added to (``strips`` from 4.4, ``sequences`` before)."""
    return editor.strips if _NEW_API else editor.sequences


def all_strips(editor: bpy.types.SequenceEditor) -> bpy.types.bpy_prop_collection:
    """Every strip, inside meta strips too."""
    return editor.strips_all if _NEW_API else editor.sequences_all


def meta_members(meta: bpy.types.Sequence) -> bpy.types.bpy_prop_collection:
    """The strips directly inside a meta strip."""
    return meta.strips if _NEW_API else meta.sequences


def scene_fcurves(scene: bpy.types.Scene) -> list[bpy.types.FCurve]:
    """The F-curves of the scene's action and its drivers: strip animation lives there.
    Blender 5.0 keeps an action's F-curves only in layers (slotted actions, from 4.4)."""
    animation = scene.animation_data
    if animation is None:
        return []
    curves = list(animation.drivers)
    action = animation.action
    if action is None:
        return curves
    if not hasattr(action, "layers"):  # before 4.4
        return curves + list(action.fcurves)
    for layer in action.layers:
        for action_strip in layer.strips:
            bag = action_strip.channelbag(animation.action_slot) if animation.action_slot else None
            curves += list(bag.fcurves) if bag else []
    return curves


def set_file_format(image_settings: bpy.types.ImageFormatSettings, file_format: str) -> None:
    """Set a render output format; Blender 5.0 first needs the matching media type."""
    if hasattr(image_settings, "media_type"):
        image_settings.media_type = "VIDEO" if file_format == "FFMPEG" else "IMAGE"
    image_settings.file_format = file_format


def _fcurve_collections(animation: bpy.types.AnimData) -> list[bpy.types.bpy_prop_collection]:
    """Where the F-curves of ``animation``'s action live: the action itself before 4.4, then one
    channel bag per layer strip for its slot."""
    action = animation.action
    if action is None:
        return []
    if not hasattr(action, "layers"):
        return [action.fcurves]
    slot = animation.action_slot
    bags = [strip.channelbag(slot) for layer in action.layers for strip in layer.strips] if slot else []
    return [bag.fcurves for bag in bags if bag is not None]


def use_own_action(scene: bpy.types.Scene) -> bpy.types.Action | None:
    """Give ``scene`` a copy of its action, so that its curves can change without touching the
    scenes that share the original; returns the copy (None when it has no action)."""
    animation = scene.animation_data
    if animation is None or animation.action is None:
        return None
    slot = getattr(animation, "action_slot", None)
    action = animation.action.copy()
    animation.action = action
    if slot is not None and animation.action_slot is None:  # 4.4+: the copy's slot of the same name
        animation.action_slot = action.slots.get(slot.identifier)
    return action


def copy_animation(scene: bpy.types.Scene, from_path: str, to_path: str) -> None:
    """Animate the property at ``to_path`` as the one at ``from_path`` is (both paths from the
    scene): copies of its keyframed F-curves and drivers. What ``to_path`` had is removed first."""
    animation = scene.animation_data
    if animation is None:
        return
    remove_animation(scene, to_path)
    for driver in list(animation.drivers):
        if driver.data_path == from_path:
            animation.drivers.from_existing(src_driver=driver).data_path = to_path
    for curves in _fcurve_collections(animation):
        for curve in [c for c in curves if c.data_path == from_path]:
            if hasattr(curves, "new_from_fcurve"):  # 4.4+
                curves.new_from_fcurve(curve, data_path=to_path)
            else:
                _copy_fcurve(curves, curve, to_path)


def remove_animation(scene: bpy.types.Scene, path: str) -> None:
    """Remove the F-curves and drivers of the property at ``path`` and of everything under it."""
    animation = scene.animation_data
    if animation is None:
        return

    def under(curve: bpy.types.FCurve) -> bool:
        return curve.data_path == path or curve.data_path.startswith((path + ".", path + "["))

    for driver in [d for d in animation.drivers if under(d)]:
        animation.drivers.remove(driver)
    for curves in _fcurve_collections(animation):
        for curve in [c for c in curves if under(c)]:
            curves.remove(curve)


KEYFRAME_SETTINGS = ("interpolation", "easing", "back", "amplitude", "period", "type")
KEYFRAME_POINTS = ("handle_left_type", "handle_right_type", "co", "handle_left", "handle_right")


def _copy_fcurve(curves: bpy.types.bpy_prop_collection, curve: bpy.types.FCurve, to_path: str) -> None:
    """Blender 4.2 has no ``new_from_fcurve``: the keyframes, one setting at a time (modifiers
    such as Cycles are not copied)."""
    group = curve.group.name if curve.group else ""
    copy = curves.new(to_path, index=curve.array_index, action_group=group)
    copy.extrapolation = curve.extrapolation
    copy.keyframe_points.add(len(curve.keyframe_points))
    for source, point in zip(curve.keyframe_points, copy.keyframe_points, strict=True):
        for name in KEYFRAME_SETTINGS + KEYFRAME_POINTS:  # handle types before handles: they move them
            setattr(point, name, getattr(source, name))
    copy.update()
