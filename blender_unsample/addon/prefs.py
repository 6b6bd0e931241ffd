"""The add-on's preferences as the rest of it reads them: its id, the worker Python, the cache
folder, Blender's online access. A bottom module (bpy only): the preferences themselves are defined
and drawn in preferences.py."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import bpy

# The add-on's own module name: "blender_unsample" from a checkout, "bl_ext.<repo>.unsample"
# when installed as an extension. Preferences are registered under it.
ADDON_ID = __package__.rpartition(".")[0]

# Job settings that trade speed for GPU memory, cheapest first; each mirrors its JobSpec field.
GPU_MEMORY_OPTIONS = ("chunk_feed_forward", "vae_batch", "cpu_offload", "vae_tiling")


def preferences() -> bpy.types.AddonPreferences | None:
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon else None


def cache_root() -> Path:
    prefs = preferences()
    if prefs and prefs.cache_folder:
        return Path(bpy.path.abspath(prefs.cache_folder))
    try:  # an installed extension has a user folder of its own
        return Path(bpy.utils.extension_path_user(ADDON_ID, create=True))
    except (ValueError, AttributeError):
        return Path(tempfile.gettempdir()) / "blender-unsample"


def worker_python() -> str:
    prefs = preferences()
    if prefs and prefs.worker_python:
        return bpy.path.abspath(prefs.worker_python)
    return sys.executable


def cluster_token_file() -> str:
    """The Cluster Token File preference as a path the worker can open: Blender's file browser may
    write it relative to the .blend ("//..."); empty when not set."""
    prefs = preferences()
    path = prefs.cluster_token_file.strip() if prefs else ""
    return bpy.path.abspath(path) if path else ""


def online_access() -> bool:
    """Blender's Allow Online Access (System preferences, or --online-mode)."""
    return bpy.app.online_access


def latent_cache_folder() -> Path:
    return cache_root() / "latents"
