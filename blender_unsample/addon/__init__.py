"""The Blender side: everything here may import bpy, and nothing here imports torch."""

from . import menus, operators, panel, preferences, properties

MODULES = (preferences, properties, operators, panel, menus)


def register() -> None:
    for module in MODULES:
        module.register()


def unregister() -> None:
    from .runner import RUNNER
    from .worker_setup import cancel_running

    RUNNER.cancel()  # no worker outlives the add-on
    cancel_running()  # nor a worker set-up
    for module in reversed(MODULES):
        module.unregister()
