import bpy


class SEQUENCER_OT_unsample_lora_add(bpy.types.Operator):
    """Add LoRA files to the Unsample list"""

    bl_idname = "sequencer.unsample_lora_add"
    bl_label = "Add LoRA"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})
    files: bpy.props.CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    directory: bpy.props.StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    filter_glob: bpy.props.StringProperty(default="*.safetensors", options={"HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.unsample
        names = [f.name for f in self.files if f.name] or [""]
        for name in names:
            lora = settings.loras.add()
            lora.path = bpy.path.abspath(self.directory + name) if self.directory and name else self.filepath
        settings.lora_index = len(settings.loras) - 1
        return {"FINISHED"}
