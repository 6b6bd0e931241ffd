"""The families Unsample runs, by protocol.FAMILIES' key. Adding one is its module and a line here."""

from __future__ import annotations

from .family import Family
from .sd15 import SD15
from .sdxl import SDXL

FAMILIES: dict[str, Family] = {family.name: family for family in (SD15, SDXL)}


def family(name: str) -> Family:
    return FAMILIES[name]
