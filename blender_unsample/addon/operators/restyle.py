import bpy

from ..strips import has_strips, restylable_reason, strips_to_restyle
from .batch import BatchOperator


class SEQUENCER_OT_unsample_restyle(BatchOperator, bpy.types.Operator):
    """Restyle the selected strips with the Unsample prompt; each result is added above its source"""

    bl_idname = "sequencer.unsample_restyle"
    bl_label = "Restyle Strips"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        scene = context.scene
        if scene is None or not has_strips(scene):
            cls.poll_message_set("This scene has no sequencer strips")
            return False
        strips = strips_to_restyle(scene)
        if not strips:
            cls.poll_message_set("Select a movie, image, scene or meta strip")
            return False
        reasons = [r for r in map(restylable_reason, strips) if r]
        if len(reasons) == len(strips):
            cls.poll_message_set(reasons[0])
            return False
        if not scene.unsample.prompt.strip():
            cls.poll_message_set("Type a style prompt first")
            return False
        return True

    def strips(self, context: bpy.types.Context) -> list:
        strips = strips_to_restyle(context.scene)
        for strip in strips:
            reason = restylable_reason(strip)
            if reason:
                self.report({"WARNING"}, f"Skipped: {reason}")
        return [s for s in strips if restylable_reason(s) is None]
