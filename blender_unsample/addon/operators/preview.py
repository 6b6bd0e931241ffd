import bpy

from ..runner import RUNNER
from ..strips import has_strips, restylable_reason
from .batch import BatchOperator


class SEQUENCER_OT_unsample_preview(BatchOperator, bpy.types.Operator):
    """Restyle one context window of the active strip around the playhead, as a temporary strip
    that the next preview replaces and the full restyle removes"""

    bl_idname = "sequencer.unsample_preview"
    bl_label = "Preview Restyle"
    bl_options = {"REGISTER"}
    preview = True

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        scene = context.scene
        if scene is None or not has_strips(scene):
            cls.poll_message_set("This scene has no sequencer strips")
            return False
        if RUNNER.busy:
            cls.poll_message_set("A restyle is running: cancel it or wait for it to finish")
            return False
        reason = restylable_reason(scene.sequence_editor.active_strip)
        if reason:
            cls.poll_message_set(reason)
            return False
        if not scene.unsample.prompt.strip():
            cls.poll_message_set("Type a style prompt first")
            return False
        return True

    def strips(self, context: bpy.types.Context) -> list:
        return [context.scene.sequence_editor.active_strip]
