"""Unsample: restyle Video Sequencer strips with diffusion models, consistent over time.

This module must stay importable without Blender and without torch: the worker process imports
the package to reach ``engine``. Blender calls :func:`register` and :func:`unregister`, which
import the Blender side (``addon``) only then.
"""


def register() -> None:
    from . import addon

    addon.register()


def unregister() -> None:
    from . import addon

    addon.unregister()
