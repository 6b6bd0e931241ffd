import bpy

from ..jobs.runner import strip_problem
from ..jobs.strips import strips_to_restyle
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
        first = None
        for strip in strips:  # one strip that can be restyled is enough: poll runs on every redraw
            reason = strip_problem(scene, strip)
            if reason is None:
                return None
            first = first or reason
        return first

    def strips(self, context: bpy.types.Context) -> list:
        chosen = []
        for strip in strips_to_restyle(context.scene):
            reason = strip_problem(context.scene, strip)
            if reason:
                self.report({"WARNING"}, f"Skipped: {reason}")
            else:
                chosen.append(strip)
        return chosen
