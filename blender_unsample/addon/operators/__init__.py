"""Operators, one per module; all are found by F3 search."""

import bpy

from .cancel import SEQUENCER_OT_unsample_cancel
from .preview import SEQUENCER_OT_unsample_preview
from .restyle import SEQUENCER_OT_unsample_restyle

classes = (SEQUENCER_OT_unsample_restyle, SEQUENCER_OT_unsample_preview, SEQUENCER_OT_unsample_cancel)
register, unregister = bpy.utils.register_classes_factory(classes)
