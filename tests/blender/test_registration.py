import sys

import bpy

import blender_unsample
from blender_unsample import addon


def our_classes() -> list[type]:
    return [cls for module in addon.MODULES for cls in module.classes]


def registered() -> set[str]:
    return {cls.__name__ for cls in our_classes() if cls.is_registered}


def blender_types() -> set[str]:
    return set(dir(bpy.types))


def test_register_unregister_register_leaves_nothing_behind(empty_scene):
    types_before = blender_types()
    assert registered() == set()
    blender_unsample.register()
    assert registered() == {cls.__name__ for cls in our_classes()} >= {"UnsamplePreferences"}
    blender_unsample.unregister()
    assert registered() == set()
    assert blender_types() == types_before
    blender_unsample.register()
    assert registered() == {cls.__name__ for cls in our_classes()}
    blender_unsample.unregister()
    assert registered() == set()
    assert blender_types() == types_before


def test_registering_imports_no_torch(empty_scene):
    blender_unsample.register()
    try:
        assert "torch" not in sys.modules
    finally:
        blender_unsample.unregister()


def test_disabling_the_add_on_while_the_panel_waits_for_the_worker_leaves_no_timer(addon):
    """A timer left behind would call into a disabled add-on (and bpy 4.2 crashes on exit with one)."""
    from blender_unsample.addon.ui import panel
    from blender_unsample.addon.worker import process

    process.forget_worker_reports()
    panel._worker_state()  # the first draw: asks the worker Python in the background
    assert bpy.app.timers.is_registered(panel._redraw_once_reported)
    blender_unsample.unregister()
    try:
        assert not bpy.app.timers.is_registered(panel._redraw_once_reported)
    finally:
        blender_unsample.register()  # the fixture disables it the way Blender does
