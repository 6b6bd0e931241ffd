import bpy

from ..jobs.paths import clear_cache
from ..jobs.runner import RUNNER
from ..prefs import latent_cache_folder
from ..ui.panel import forget_cache_reading, size_text


class SEQUENCER_OT_unsample_clear_cache(bpy.types.Operator):
    """Delete the cached unsampled latents: the next restyle of each strip unsamples again"""

    bl_idname = "sequencer.unsample_clear_cache"
    bl_label = "Clear Unsample Cache"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if RUNNER.busy:
            cls.poll_message_set("A restyle is running: wait for it to finish")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        freed = clear_cache(latent_cache_folder())
        forget_cache_reading()
        self.report({"INFO"}, f"Unsample cache cleared: {size_text(freed)} freed")
        return {"FINISHED"}
