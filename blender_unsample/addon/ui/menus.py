"""Restyle, Preview and Cancel in the Strip menu and the strip context menu, Set Up Worker and Check
Cluster in the Strip menu (so F3 finds them)."""

import bpy


def draw_entries(self: bpy.types.Menu, context: bpy.types.Context) -> None:
    layout = self.layout
    layout.separator()
    layout.operator("sequencer.unsample_restyle", icon="BRUSHES_ALL")
    layout.operator("sequencer.unsample_preview", icon="HIDE_OFF")
    layout.operator("sequencer.unsample_cancel", icon="CANCEL")
    if self.bl_idname == "SEQUENCER_MT_strip":
        layout.operator("sequencer.unsample_setup_worker", text="Set Up Unsample Worker", icon="IMPORT")
        layout.operator("sequencer.unsample_check_cluster", text="Check Unsample Cluster", icon="NETWORK_DRIVE")


MENUS = ("SEQUENCER_MT_strip", "SEQUENCER_MT_context_menu")
classes = ()


def register() -> None:
    for name in MENUS:
        getattr(bpy.types, name).append(draw_entries)


def unregister() -> None:
    for name in MENUS:
        getattr(bpy.types, name).remove(draw_entries)
