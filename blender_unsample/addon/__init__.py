"""The Blender side: everything here may import bpy, and nothing here imports torch."""

from . import preferences

MODULES = (preferences,)


def register() -> None:
    for module in MODULES:
        module.register()


def unregister() -> None:
    for module in reversed(MODULES):
        module.unregister()
