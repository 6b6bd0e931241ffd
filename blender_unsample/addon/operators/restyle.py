import bpy

from ..strips import restylable_reason, strips_to_restyle
from .batch import BatchOperator


class SEQUENCER_OT_unsample_restyle(BatchOperator, bpy.types.Operator):
    """Restyle the selected strips with the Unsample prompt; each result is added above its source"""

    bl_idname = "sequencer.unsample_restyle"
    bl_label = "Restyle Strips"
    bl_options = {"REGISTER"}

    @classmethod
    def strip_problem(cls, scene: bpy.types.Scene) -> str | None:
        strips = strips_to_restyle(scene)
        if not strips:
            return "Select a movie, image, scene or meta strip"
        reasons = [r for r in map(restylable_reason, strips) if r]
        return reasons[0] if len(reasons) == len(strips) else None

    def strips(self, context: bpy.types.Context) -> list:
        strips = strips_to_restyle(context.scene)
        for strip in strips:
            reason = restylable_reason(strip)
            if reason:
                self.report({"WARNING"}, f"Skipped: {reason}")
        return [s for s in strips if restylable_reason(s) is None]
