"""The model families: one module each (sd15.py, sdxl.py), registered here; and the checks that a
set of files is of one family (checks.py). Adding a family is its module, its tests and a line here."""

from .checks import (
    FAMILY_NAMES,
    adapter_family,
    check_controlnet,
    check_family,
    check_motion_adapter,
    check_vae,
    named,
    unet_family,
    vae_family,
)
from .family import Family
from .sd15 import SD15
from .sdxl import SDXL

FAMILIES: dict[str, Family] = {family.name: family for family in (SD15, SDXL)}


def family(name: str) -> Family:
    return FAMILIES[name]


__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "Family",
    "adapter_family",
    "check_controlnet",
    "check_family",
    "check_motion_adapter",
    "check_vae",
    "family",
    "named",
    "unet_family",
    "vae_family",
]
