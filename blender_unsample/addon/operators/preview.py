import bpy

from ..jobs.runner import RUNNER, strip_problem
from .batch import BatchOperator


class SEQUENCER_OT_unsample_preview(BatchOperator, bpy.types.Operator):
    """Restyle one context window of the active strip around the playhead, as a temporary strip
    that the next preview replaces and the full restyle removes"""

    bl_idname = "sequencer.unsample_preview"
    bl_label = "Preview Restyle"
    bl_options = {"REGISTER"}
    preview = True

    @classmethod
    def strip_problem(cls, scene: bpy.types.Scene) -> str | None:
        if RUNNER.busy:
            return "A restyle is running: cancel it or wait for it to finish"
        return strip_problem(scene, scene.sequence_editor.active_strip, preview=True)

    def strips(self, context: bpy.types.Context) -> list:
        return [context.scene.sequence_editor.active_strip]
