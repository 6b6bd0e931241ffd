"""The Blender side: everything here may import bpy, and nothing here imports torch."""

from . import operators, properties
from .ui import menus, panel, preferences

MODULES = (preferences, properties, operators, panel, menus)


def register() -> None:
    from .jobs.runner import register_handlers

    for module in MODULES:
        module.register()
    register_handlers()  # a job belongs to the file it started in: a file load stops it


def unregister() -> None:
    from .jobs.runner import RUNNER, unregister_handlers
    from .worker.environment import cancel_running

    unregister_handlers()
    RUNNER.shut_down()  # no worker outlives the add-on, and no job of it comes back when enabled again
    cancel_running()  # nor a worker set-up
    for module in reversed(MODULES):
        module.unregister()
