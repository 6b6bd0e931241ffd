"""A strip's frames are rendered by a second Blender in the background: the user's Blender renders
nothing, the frames follow the strip, and the export process never outlives its job or the user's
Blender, nor leaves files behind."""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import bpy
import numpy as np
import pytest
from conftest import (
    add_image_strip,
    image_pixels,
    run_interactively,
    snapshot,
    styled_strips,
    video_scene,
    write_frames,
)

from blender_unsample.addon.jobs import export, export_process
from blender_unsample.addon.jobs.export import FrameExporter
from blender_unsample.addon.jobs.export_process import ExportProcess
from blender_unsample.addon.jobs.runner import RUNNER


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


def square_x(frame: Path) -> float:
    """Where the bright square of write_frames() is, from the left, as a share of the width."""
    image = bpy.data.images.load(str(frame))
    width, height = image.size
    rgba = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(rgba)
    bpy.data.images.remove(image)
    rgba = rgba.reshape(height, width, 4)
    columns = np.nonzero(((rgba[..., 0] > 0.9) & (rgba[..., 2] < 0.4)).any(axis=0))[0]
    assert columns.size, f"no square in {frame.name}"
    return columns.mean() / width


def export_all(scene, strip, frames: range, folder: Path, size=(64, 40)) -> list[Path]:
    exporter = ExportProcess(scene, strip, frames, folder, size)
    try:
        deadline = time.monotonic() + 120
        while not exporter.done and time.monotonic() < deadline:
            exporter.poll()
            time.sleep(0.05)
    finally:
        exporter.close()
    return exporter.paths


def test_the_exported_frames_follow_the_strip_wherever_the_playhead_is(image_strip, tmp_path):
    scene = bpy.context.scene
    scene.frame_current = 32  # inside the strip: each frame is still its own, not the playhead's
    frames = export_all(scene, image_strip, range(30, 36), tmp_path / "run" / "frames")
    positions = [square_x(frame) for frame in frames]
    assert len(positions) == 6 and positions == sorted(set(positions)), positions
    assert scene.frame_current == 32


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


@pytest.fixture
def fresh_tmpdir(tmp_path, monkeypatch) -> Path:
    """The system's temporary folder, as the processes Blender starts see it."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(name, str(folder))
    return folder


def test_cancel_while_exporting_leaves_whole_frames_and_no_process_or_temporary_files(addon, tmp_path, fresh_tmpdir):
    scene = video_scene(bpy.context.scene)
    sources = write_frames(tmp_path / "src", 3)
    long_strip = add_image_strip(scene, "Long", sources * 60, 1, 1)  # 180 frames: seconds to export
    RUNNER.enqueue(scene, [long_strip])
    run_dir = RUNNER.queue[0].run_dir
    frames, process = [], []

    def cancel_after_the_first_frames():
        job = RUNNER.current
        if job and job.exporter and not process and list((run_dir / "frames").glob("frame_*.png")):
            process.append(job.exporter.process)
            RUNNER.cancel()
            frames.extend(sorted((run_dir / "frames").glob("frame_*.png")))

    run_interactively(scene, cancel_after_the_first_frames)
    assert process and process[0].poll() is not None, "the export process is stopped"
    assert bpy.context.window_manager.unsample.status == "CANCELLED" and not styled_strips(scene)
    assert 1 <= len(frames) < 180, "cancelled part way"
    left = sorted(p.name for p in (run_dir / "frames").iterdir())
    assert left == [f.name for f in frames], "only the whole frames are left, no partly written one"
    assert all(image_pixels(frame).shape == (64 * 36 * 4,) for frame in frames)
    assert not (run_dir / "export.blend").exists() and not (run_dir / "tmp").exists()
    assert not list(fresh_tmpdir.iterdir()), "Blender's temporary folder is not left behind"


def test_a_finished_export_leaves_no_temporary_files(image_strip, tmp_path, fresh_tmpdir):
    frames = export_all(bpy.context.scene, image_strip, range(30, 36), tmp_path / "run" / "frames")
    assert len(frames) == 6
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["export.json", "export.log", "frames"]
    assert not list(fresh_tmpdir.iterdir())


def test_frames_left_half_written_are_removed(image_strip, tmp_path):
    folder = tmp_path / "run" / "frames"
    folder.mkdir(parents=True)
    (folder / ".partial-frame_000004.png").write_bytes(b"\x89PNG half")  # from a Blender killed earlier
    exporter = ExportProcess(bpy.context.scene, image_strip, range(30, 5030), folder, (64, 40))
    try:
        assert not (folder / ".partial-frame_000004.png").exists(), "removed before exporting again"
        (folder / ".partial-frame_009999.png").write_bytes(b"\x89PNG half")  # as if being written now
    finally:
        exporter.close()
    assert not list(folder.glob(".partial-*"))


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


def wait_for_failure(exporter: ExportProcess) -> str:
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                exporter.poll()
            except export_process.JobError as error:
                return str(error)
            time.sleep(0.05)
    finally:
        exporter.close()
    raise AssertionError("the export did not fail")


def test_a_failed_export_is_reported_with_its_reason(image_strip, tmp_path):
    missing = SimpleNamespace(name="no such strip")
    exporter = ExportProcess(bpy.context.scene, missing, range(30, 36), tmp_path / "run" / "frames", (64, 40))
    said = wait_for_failure(exporter)
    assert said.startswith("exporting the strip's frames failed (exit code 1): KeyError") and "no such strip" in said


def run_export_process_with(monkeypatch, code: str) -> None:
    """Start export processes that run ``code`` once the add-on's modules are importable there."""
    command = export_process.export_command
    anchor = "main(args[1])"
    assert anchor in export_process._BOOTSTRAP

    def patched(job_file: Path) -> list[str]:
        args = command(job_file)
        assert args[1] == "-c", "Blender as a Python module, as in these tests"
        return [args[0], "-c", export_process._BOOTSTRAP.replace(anchor, f"{code}\n{anchor}"), *args[3:]]

    monkeypatch.setattr(export_process, "export_command", patched)


CRASH_AT_EXIT = """
import os
exit_now = os._exit
os._exit = lambda code: exit_now(code or 134)  # as if it crashed once every frame was written
"""
STOP_AFTER_TWO = """
from unsample_export.addon.jobs.export import FrameExporter
FrameExporter.done = property(lambda self: len(self.paths) >= 2)
"""


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (CRASH_AT_EXIT, r"failed \(exit code 134\): .*\(6 of 6 frames written; the log: .*export\.log\)$"),
        (STOP_AFTER_TWO, r"failed \(exit code 0\): it ended with only 2 of 6 frames written \(the log: "),
    ],
    ids=["crashed-after-every-frame", "ended-early"],
)
def test_a_failed_export_says_how_far_it_got(image_strip, tmp_path, monkeypatch, code, said):
    run_export_process_with(monkeypatch, code)
    exporter = ExportProcess(bpy.context.scene, image_strip, range(30, 36), tmp_path / "run" / "frames", (64, 40))
    message = wait_for_failure(exporter)
    assert re.search(said, message), message
    assert "without finishing" not in message


DISK_FULL = "the disk is full: {} could not be written to {}; free some space there, then run the job again"


def test_a_full_disk_while_writing_the_scenes_copy_is_named(image_strip, tmp_path, monkeypatch):
    def disk_full(*_args, **_kwargs):
        raise OSError("Error: No space left on device\n")  # as Blender raises it

    monkeypatch.setattr(bpy.types.BlendDataLibraries, "write", disk_full)
    scene = bpy.context.scene
    before = snapshot(scene)
    with pytest.raises(RuntimeError) as raised:
        bpy.ops.sequencer.unsample_restyle()
    [run] = (tmp_path / "cache").glob("jobs/*/runs/*")
    said = DISK_FULL.format("export.blend", run) + " [disk_full]"
    assert f"Shots: cannot export the strip's frames: {said}" in str(raised.value)
    assert snapshot(scene) == before and not styled_strips(scene)
    assert not (run / "export.blend").exists() and not (run / "tmp").exists()


RENDER_DISK_FULL = """
import errno
from unsample_export.addon.jobs.export import FrameExporter
def disk_full(self, budget):
    raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / "frame_000000.png"))
FrameExporter.step = disk_full
"""


def test_a_full_disk_while_rendering_frames_is_named(image_strip, tmp_path, monkeypatch):
    run_export_process_with(monkeypatch, RENDER_DISK_FULL)
    scene = bpy.context.scene
    before = snapshot(scene)
    with pytest.raises(RuntimeError) as raised:
        bpy.ops.sequencer.unsample_restyle()
    [run] = (tmp_path / "cache").glob("jobs/*/runs/*")
    said = DISK_FULL.format("frame_000000.png", run / "frames") + " [disk_full]"
    assert f"Shots: exporting the strip's frames failed (exit code 1): {said}" in str(raised.value)
    assert snapshot(scene) == before and not styled_strips(scene)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_a_frame_blender_could_not_write_for_lack_of_space_is_a_full_disk(image_strip, tmp_path, monkeypatch):
    # Blender says "Saved" even when writing the file failed: the frame is checked, not trusted.
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / ".partial-frame_000000.png").symlink_to("/dev/full")  # every write to it fails: no space
    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: SimpleNamespace(total=1, used=1, free=0))
    exporter = FrameExporter(bpy.context.scene, image_strip, range(30, 36), folder, (64, 40))
    try:
        with pytest.raises(OSError) as raised:
            exporter.step(10.0)
    finally:
        exporter.close()
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(folder / "frame_000000.png")
    assert list(folder.iterdir()) == [], "no frame, whole or not"
    assert export_process.failure_text(raised.value) == DISK_FULL.format("frame_000000.png", folder) + " [disk_full]"
