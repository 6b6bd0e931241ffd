"""Operators, one per module; all are found by F3 search."""

import bpy

from .batch import stop_driving
from .cancel import SEQUENCER_OT_unsample_cancel
from .check_cluster import SEQUENCER_OT_unsample_check_cluster, unregister_timer
from .clear_cache import SEQUENCER_OT_unsample_clear_cache
from .lora_add import SEQUENCER_OT_unsample_lora_add
from .lora_remove import SEQUENCER_OT_unsample_lora_remove
from .preview import SEQUENCER_OT_unsample_preview
from .restyle import SEQUENCER_OT_unsample_restyle
from .resume import SEQUENCER_OT_unsample_resume
from .setup_cancel import SEQUENCER_OT_unsample_setup_cancel
from .setup_worker import SEQUENCER_OT_unsample_setup_worker

classes = (
    SEQUENCER_OT_unsample_restyle,
    SEQUENCER_OT_unsample_preview,
    SEQUENCER_OT_unsample_cancel,
    SEQUENCER_OT_unsample_lora_add,
    SEQUENCER_OT_unsample_lora_remove,
    SEQUENCER_OT_unsample_clear_cache,
    SEQUENCER_OT_unsample_resume,
    SEQUENCER_OT_unsample_setup_worker,
    SEQUENCER_OT_unsample_setup_cancel,
    SEQUENCER_OT_unsample_check_cluster,
)
register, _unregister_classes = bpy.utils.register_classes_factory(classes)


def unregister() -> None:
    unregister_timer()
    stop_driving()
    _unregister_classes()
