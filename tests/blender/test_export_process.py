"""A strip's frames are rendered by a second Blender in the background: the user's Blender renders
nothing, and the export process never outlives its job or the user's Blender."""

from __future__ import annotations

import time
from types import SimpleNamespace

import bpy
import pytest
from conftest import image_pixels, run_interactively, snapshot, styled_strips

from blender_unsample.addon.export_process import ExportProcess
from blender_unsample.addon.runner import RUNNER


def test_the_users_blender_renders_nothing_while_a_strip_is_restyled(image_strip):
    scene = bpy.context.scene
    renders = []

    def count_render(*_args):
        renders.append(1)

    bpy.app.handlers.render_pre.append(count_render)
    try:
        RUNNER.enqueue(scene, [image_strip])
        run_interactively(scene)
    finally:
        bpy.app.handlers.render_pre.remove(count_render)
    assert len(styled_strips(scene)) == 1, RUNNER.outcomes
    assert renders == [], "frames are rendered by the export process, not on Blender's main thread"


def test_edits_not_yet_saved_are_exported(image_strip):
    scene = bpy.context.scene
    assert not bpy.data.filepath, "the scene was never saved"
    image_strip.color_multiply = 0.0  # the timeline now shows the strip black
    RUNNER.enqueue(scene, [image_strip])
    run_dir = RUNNER.queue[0].run_dir
    run_interactively(scene)
    frames = sorted((run_dir / "frames").glob("frame_*.png"))
    assert len(frames) == 6
    assert all(image_pixels(frame).reshape(-1, 4)[:, :3].max() == 0 for frame in frames)
    assert not (run_dir / "export.blend").exists(), "the scene's copy is removed once exported"


def test_cancel_while_exporting_stops_the_export_process(image_strip):
    scene = bpy.context.scene
    before = snapshot(scene)
    RUNNER.enqueue(scene, [image_strip])
    run_dir = RUNNER.queue[0].run_dir
    RUNNER.tick()  # writes the scene and starts the export process
    process = RUNNER.current.exporter.process
    RUNNER.cancel()
    assert process.poll() is not None, "the export process is stopped at once"
    run_interactively(scene)
    assert bpy.context.window_manager.unsample.status == "CANCELLED"
    assert snapshot(scene) == before and not styled_strips(scene)
    assert not list((run_dir / "frames").glob(".partial-*")), "only whole frames are left"
    assert not (run_dir / "export.blend").exists()


def test_the_export_process_stops_when_blender_goes_away(image_strip, tmp_path):
    scene = bpy.context.scene
    frames = range(1, 5001)  # far more than it can render before it notices
    exporter = ExportProcess(scene, image_strip, frames, tmp_path / "run" / "frames", (64, 40))
    started = time.monotonic()
    exporter.process.stdin.close()  # what the operating system does when Blender ends
    try:
        exit_code = exporter.process.wait(timeout=60)
    finally:
        exporter.close()
    assert exit_code == 3 and time.monotonic() - started < 30
    assert len(list((tmp_path / "run" / "frames").glob("frame_*.png"))) < len(frames)


def test_a_failed_export_is_reported_with_its_reason(image_strip, tmp_path):
    scene = bpy.context.scene
    missing = SimpleNamespace(name="no such strip")
    exporter = ExportProcess(scene, missing, range(30, 36), tmp_path / "run" / "frames", (64, 40))
    try:
        with pytest.raises(OSError, match=r"exporting the strip's frames failed \(exit code 1\).*no such strip"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                exporter.poll()
                time.sleep(0.05)
    finally:
        exporter.close()
