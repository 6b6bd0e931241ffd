import bpy

from ..jobs.runner import RUNNER
from .batch import BatchOperator


class SEQUENCER_OT_unsample_resume(BatchOperator, bpy.types.Operator):
    """Run the strips of the last batch that failed or were cancelled again, reusing the frames,
    latents and styled frames their interrupted run left in its folder"""

    bl_idname = "sequencer.unsample_resume"
    bl_label = "Resume Restyle"
    bl_options = {"REGISTER"}

    @classmethod
    def problem(cls, scene: bpy.types.Scene | None) -> str | None:
        if RUNNER.busy:
            return "A restyle is running"
        if not RUNNER.resumable:
            return "Nothing to resume: no strip of the last batch failed or was cancelled"
        return None

    def enqueue(self, context: bpy.types.Context) -> bool:
        if RUNNER.resume() == 0:
            self.report({"WARNING"}, "Nothing to resume: the job folders are gone")
            return False
        return True
