"""What the worker's Python can do: its packages and devices. Imports torch only if present."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys

from ..protocol import WORKER_PACKAGES

_DISTRIBUTIONS = {"PIL": "pillow"}


def missing_packages() -> list[str]:
    """The worker packages this Python cannot import (cheap: nothing is imported)."""
    return [name for name in WORKER_PACKAGES if importlib.util.find_spec(name) is None]


def report() -> dict[str, object]:
    """Python, package versions and the devices torch sees, as plain data: the keys are
    protocol.DOCTOR_REPORT_KEYS, which the add-on reads."""
    versions = {}
    for name in WORKER_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(_DISTRIBUTIONS.get(name, name))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = ["cpu"]
    if versions["torch"]:
        import torch

        if torch.cuda.is_available():
            devices.insert(0, f"cuda: {torch.cuda.get_device_name(0)}")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            devices.insert(0, "mps")
    return {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "packages": versions,
        "missing": missing_packages(),
        "devices": devices,
    }
