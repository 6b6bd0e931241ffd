import bpy

from ..jobs.runner import RUNNER


class SEQUENCER_OT_unsample_cancel(bpy.types.Operator):
    """Stop the running restyle and drop the strips still waiting; nothing half-made is added"""

    bl_idname = "sequencer.unsample_cancel"
    bl_label = "Cancel Restyle"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not RUNNER.busy:
            cls.poll_message_set("No restyle is running")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        RUNNER.cancel()
        self.report({"INFO"}, "Cancelling the restyle")
        return {"FINISHED"}
