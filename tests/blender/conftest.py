"""Tests in real Blender (the bpy module): 5.0 in .venv, 4.2 LTS in .venv-blender42."""

import bpy
import pytest


@pytest.fixture
def empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene
