"""A job and what happens around it in real Blender: another file opened while it runs, the add-on
disabled under it, no channel (or only a locked one) above its source, a setting that no Resume can fix."""

from __future__ import annotations

import json
import sys
import time

import addon_utils
import bpy
import pytest
from conftest import (
    ADDON,
    add_image_strip,
    poll_message,
    run_interactively,
    snapshot,
    strips_of,
    styled_strips,
    write_frames,
)

from blender_unsample.addon.jobs.runner import RUNNER
from blender_unsample.addon.operators import (
    SEQUENCER_OT_unsample_preview,
    SEQUENCER_OT_unsample_restyle,
    SEQUENCER_OT_unsample_resume,
)


@pytest.fixture
def held_worker(addon, tmp_path):
    """A stand-in worker that waits while the file ``hold`` exists (or until a cancel line), then
    hands back the exported frames as its styled frames: a job that is running for as long as a test
    needs it to. Returns the hold file; deleting it lets the worker finish."""
    hold = tmp_path / "hold"
    hold.touch()
    script = tmp_path / "held-worker"
    script.write_text(
        f"""#!{sys.executable}
import json, os, shutil, sys, threading, time
from pathlib import Path
if "doctor" in sys.argv:
    print(json.dumps({{"python": sys.argv[0], "packages": {{"torch": "2.13.0"}}, "missing": [], "devices": ["cpu"]}}))
    sys.exit(0)
def stop_on_cancel():
    for line in sys.stdin:
        if line.strip() == "cancel":
            os._exit(130)
threading.Thread(target=stop_on_cancel, daemon=True).start()
deadline = time.monotonic() + 120
while Path({str(hold)!r}).exists() and time.monotonic() < deadline:
    time.sleep(0.05)
job = json.loads(Path(sys.argv[sys.argv.index("--job") + 1]).read_text(encoding="utf-8"))
out = Path(job["out"])
out.mkdir(parents=True, exist_ok=True)
frames = sorted(Path(job["frames"]).glob("*.png"))
for frame in frames:
    shutil.copy(frame, out / frame.name)
print(json.dumps({{"type": "done", "frames": len(frames), "out": str(out), "seconds": 0.0}}), flush=True)
""",
        encoding="utf-8",
    )
    script.chmod(0o755)
    addon.worker_python = str(script)
    return hold


def tick_until_the_worker_runs():
    """Drive the runner as the timer does, until the strip's frames are exported and its worker started."""
    deadline = time.monotonic() + 120
    while not (RUNNER.current and RUNNER.current.worker):
        assert RUNNER.tick(), f"the job ended before its worker started: {RUNNER.outcomes}"
        assert time.monotonic() < deadline, "no worker within 2 minutes"
        time.sleep(0.01)
    return RUNNER.current


def test_opening_another_file_cancels_the_job_and_leaves_that_file_alone(image_strip, held_worker, tmp_path):
    first, other = tmp_path / "A.blend", tmp_path / "B.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(other), copy=True)  # the same scene and strip names
    bpy.ops.wm.save_as_mainfile(filepath=str(first))
    RUNNER.enqueue(bpy.context.scene, [image_strip])
    job = tick_until_the_worker_runs()
    worker = job.worker

    bpy.ops.wm.open_mainfile(filepath=str(other))
    held_worker.unlink()  # were it still running for A, it would now hand back its frames
    scene = bpy.context.scene
    as_opened = snapshot(scene)
    run_interactively(scene)
    assert bpy.data.filepath == str(other)
    # (bpy as a module counts every opened file as unsaved: bpy.data.is_dirty cannot tell here.)
    assert snapshot(scene) == as_opened and not styled_strips(scene), "nothing was added to B"
    state = bpy.context.window_manager.unsample
    assert state.status == "CANCELLED"
    assert state.message.startswith("'Shots': cancelled because another file was opened: nothing was added")
    assert f"the job folder is kept: {job.run_dir} (open A.blend again to Resume)" in state.message
    assert (job.run_dir / "job.json").is_file() and len(list(job.frames_dir.glob("frame_*.png"))) == 6
    assert worker.process.wait(timeout=30) is not None, "A's worker was told to stop"
    assert not SEQUENCER_OT_unsample_resume.poll(bpy.context), "A's strip is not resumed in B"

    bpy.ops.wm.open_mainfile(filepath=str(first))
    assert [j.ref.name for j in RUNNER.resumable] == ["Shots"], "back in A, its job can be resumed"
    assert bpy.ops.sequencer.unsample_resume() == {"FINISHED"}
    assert [s["unsample_source"] for s in styled_strips(bpy.context.scene)] == ["Shots"]


def test_disabling_the_add_on_mid_job_stops_it_and_the_next_restyle_reports_only_itself(
    image_strip, held_worker, tmp_path
):
    RUNNER.enqueue(bpy.context.scene, [image_strip])
    worker = tick_until_the_worker_runs().worker
    addon_utils.disable(ADDON, default_set=True)
    try:
        assert worker.process.wait(timeout=30) is not None, "the worker stops with the add-on"
    finally:
        addon_utils.enable(ADDON, default_set=True, handle_error=None)
    prefs = bpy.context.preferences.addons[ADDON].preferences  # enabled afresh: its preferences too
    prefs.cache_folder, prefs.device, prefs.worker_python = (
        str(tmp_path / "cache"),
        "cpu",
        str(tmp_path / "held-worker"),
    )
    held_worker.unlink()
    state = bpy.context.window_manager.unsample
    left_over = (RUNNER.busy, len(RUNNER.resumable), state.status)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    assert (state.status, state.message) == ("FINISHED", "Shots: added 'Shots (Unsample)' on channel 2")
    assert [(o.strip, o.ok) for o in RUNNER.outcomes] == [("Shots", True)]
    assert left_over == (False, 0, "IDLE"), "nothing of the old job came back with the add-on"


# --- where the styled strip goes ----------------------------------------------------------------------


def select_only(scene, *strips):
    for strip in strips_of(scene):
        strip.select = strip in strips
    scene.sequence_editor.active_strip = strips[-1]


def add_color_strip(scene, name: str, channel: int, start: int, length: int):
    try:  # Blender 5.0 takes a length, 4.2 an end frame
        return strips_of(scene).new_effect(name, "COLOR", channel, frame_start=start, length=length)
    except TypeError:
        return strips_of(scene).new_effect(name, "COLOR", channel, frame_start=start, frame_end=start + length)


def test_no_free_channel_above_greys_restyle_and_a_batch_skips_that_strip(image_strip, quick_worker, tmp_path, capfd):
    scene = bpy.context.scene
    top = add_image_strip(scene, "Top", write_frames(tmp_path / "top", 2), 128, 1)
    select_only(scene, top)
    said = "'Top' is on channel 128, the last: no channel above it can take the styled strip; move it down"
    assert poll_message(SEQUENCER_OT_unsample_restyle, bpy.context) == (False, said)
    assert poll_message(SEQUENCER_OT_unsample_preview, bpy.context) == (False, said)
    middle = add_image_strip(scene, "Middle", write_frames(tmp_path / "middle", 3), 126, 10)
    add_color_strip(scene, "Matte", 127, 11, 1)  # over one frame of Middle
    scene.sequence_editor.channels[128].lock = True
    select_only(scene, middle)
    ok, message = poll_message(SEQUENCER_OT_unsample_restyle, bpy.context)
    assert not ok
    assert message == (
        "'Middle' has no free channel above it over frames 10-12 (channels 127-128 are taken or locked); free or "
        "unlock one"
    )
    select_only(scene, top, middle, image_strip)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    out = capfd.readouterr().out
    assert f"Warning: Skipped: {said}" in out and "Warning: Skipped: 'Middle' has no free channel" in out
    assert [s["unsample_source"] for s in styled_strips(scene)] == ["Shots"]


@pytest.mark.parametrize("state", ["lock", "mute"])
def test_a_locked_or_muted_channel_above_is_passed_over(image_strip, quick_worker, state):
    # A strip in a locked channel cannot be moved until it is unlocked; in a muted one it is not seen.
    scene = bpy.context.scene
    setattr(scene.sequence_editor.channels[2], state, True)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    [styled] = styled_strips(scene)
    assert styled.channel == 3 and not getattr(scene.sequence_editor.channels[3], state)


def test_channels_taken_during_the_job_are_said_in_words_with_the_frames_folder(image_strip, quick_worker, monkeypatch):
    scene = bpy.context.scene
    image_strip.channel = 126
    tick, blocked = RUNNER.tick, []

    def tick_and_fill_the_channels_above() -> bool:
        busy = tick()
        if RUNNER.current and RUNNER.current.worker and not blocked:
            blocked.extend(add_color_strip(scene, f"Title {c}", c, 28 + c - 127, 20) for c in (127, 128))
        return busy

    monkeypatch.setattr(RUNNER, "tick", tick_and_fill_the_channels_above)
    with pytest.raises(RuntimeError) as raised:
        bpy.ops.sequencer.unsample_restyle()
    [run] = RUNNER.resumable
    said = (
        "Shots: 'Shots' has no free channel above it over frames 30-35 (channels 127-128 are taken); free one, then "
        f"press Resume. Nothing was added; the styled frames are in {run.out_dir}"
    )
    assert bpy.context.window_manager.unsample.message == said
    assert "LookupError" not in str(raised.value)
    assert len(list(run.out_dir.glob("frame_*.png"))) == 6 and len(strips_of(scene)) == 3
    strips_of(scene).remove(blocked[1])
    assert bpy.ops.sequencer.unsample_resume() == {"FINISHED"}
    [styled] = styled_strips(scene)
    assert styled.channel == 128


# --- settings that no Resume can fix ------------------------------------------------------------------


def test_a_checkpoint_path_that_does_not_exist_greys_restyle_and_preview_but_a_hub_id_does_not(image_strip, tmp_path):
    settings = bpy.context.scene.unsample
    for missing in (str(tmp_path / "no-such-model"), str(tmp_path / "model.safetensors"), "model.safetensors"):
        settings.checkpoint = missing
        said = f"The checkpoint {missing} does not exist: in the Models sub-panel choose a model file or folder"
        for operator in (SEQUENCER_OT_unsample_restyle, SEQUENCER_OT_unsample_preview):
            ok, message = poll_message(operator, bpy.context)
            assert not ok and message.startswith(said), message
    for usable in ("org/some-model", "", str(tmp_path)):  # a Hub id, the default, a folder that is there
        settings.checkpoint = usable
        assert poll_message(SEQUENCER_OT_unsample_restyle, bpy.context) == (True, ""), usable


@pytest.mark.parametrize("code", ["model_not_found", "bad_settings"])
def test_a_settings_error_offers_the_fix_not_resume(image_strip, tmp_path, code):
    event = {"type": "error", "code": code, "message": "the checkpoint org/some-model is not in the cache"}
    worker = tmp_path / "python-with-a-settings-error"
    worker.write_text(f"#!/bin/sh\necho '{json.dumps(event)}'\nexit 5\n", encoding="utf-8")
    worker.chmod(0o755)
    bpy.context.preferences.addons[ADDON].preferences.worker_python = str(worker)
    with pytest.raises(RuntimeError, match="is not in the cache"):
        bpy.ops.sequencer.unsample_restyle()
    state = bpy.context.window_manager.unsample
    assert state.status == "FAILED"
    assert state.message == (
        "Shots: the checkpoint org/some-model is not in the cache (fix the setting it names in the Unsample panel or "
        f"the add-on's preferences, then press Restyle: Resume would run the same settings again) [{code}]"
    )
    assert not RUNNER.resumable
    assert poll_message(SEQUENCER_OT_unsample_resume, bpy.context) == (
        False,
        "Nothing to resume: no strip of the last batch failed or was cancelled",
    )
