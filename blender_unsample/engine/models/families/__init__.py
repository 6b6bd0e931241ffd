"""The model families: one module each (sd15.py, sdxl.py, their behaviour as data), registered in
registry.py; one detector that tells which family a folder, file or LoRA is (detect.py); and the
checks that a set of files is of one family (checks.py). Adding a family is its module, its tests
and a line in the registry."""

from .checks import check_controlnet, check_family, check_motion_adapter, check_vae
from .detect import label
from .family import Family, Signature
from .registry import FAMILIES, family

__all__ = [
    "FAMILIES",
    "Family",
    "Signature",
    "check_controlnet",
    "check_family",
    "check_motion_adapter",
    "check_vae",
    "family",
    "label",
]
