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
