"""Finding, checking and loading the model files a job names: diffusers folders, Hub ids, single
files, AnimateDiff and Hotshot-XL motion modules, ControlNets, VAEs and LoRAs.

:func:`load_components` is the one entry point: it returns every model a job needs, each role
loaded in one place, after the files were checked to fit together. diffusers does the loading.
"""

from .components import Components, load_components

__all__ = ["Components", "load_components"]
