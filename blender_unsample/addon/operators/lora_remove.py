import bpy


class SEQUENCER_OT_unsample_lora_remove(bpy.types.Operator):
    """Remove the selected LoRA from the Unsample list"""

    bl_idname = "sequencer.unsample_lora_remove"
    bl_label = "Remove LoRA"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        settings = context.scene.unsample if context.scene else None
        if settings is None or not 0 <= settings.lora_index < len(settings.loras):
            cls.poll_message_set("No LoRA selected")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.unsample
        settings.loras.remove(settings.lora_index)
        settings.lora_index = min(settings.lora_index, len(settings.loras) - 1)
        return {"FINISHED"}
