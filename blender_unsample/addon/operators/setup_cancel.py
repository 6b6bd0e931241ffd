import bpy

from ..worker import environment


class SEQUENCER_OT_unsample_setup_cancel(bpy.types.Operator):
    """Stop Set Up Worker; what it downloaded stays in its cache, so Set Up Worker resumes from there"""

    bl_idname = "sequencer.unsample_setup_cancel"
    bl_label = "Cancel Worker Set-Up"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if environment.running() is None:
            cls.poll_message_set("The worker is not being set up")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        environment.cancel_running(wait=0.0)  # the modal operator notices the end and says so
        self.report({"INFO"}, "Cancelling the worker set-up")
        return {"FINISHED"}
