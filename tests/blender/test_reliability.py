"""Faults in real Blender: a killed worker, two restyles at once, the source strip changed
mid-job, missing media, awkward names, GPU memory; nothing lost, the .blend untouched."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import bpy
import numpy as np
import pytest
from conftest import (
    add_image_strip,
    add_modifier,
    image_pixels,
    rna_state,
    run_interactively,
    snapshot,
    strips_of,
    styled_strips,
    video_scene,
    write_frames,
    write_movie,
)

from blender_unsample.addon import prefs as looked_up
from blender_unsample.addon.jobs.runner import RUNNER
from blender_unsample.addon.operators.batch import BatchOperator
from blender_unsample.addon.worker.process import Worker


def test_a_killed_worker_is_reported_and_resume_finishes_the_job_reusing_its_work(image_strip):
    scene = bpy.context.scene
    before = snapshot(scene)
    state = bpy.context.window_manager.unsample
    RUNNER.enqueue(scene, [image_strip])
    run_dir = RUNNER.queue[0].run_dir

    def kill_while_restyling():
        job = RUNNER.current
        if job and job.worker and state.stage.startswith("Restyling") and job.worker.exit_code is None:
            os.kill(job.worker.process.pid, signal.SIGKILL)  # the unsample pass is done and cached

    run_interactively(scene, kill_while_restyling)
    assert state.status == "FAILED" and "stopped unexpectedly" in state.message
    assert snapshot(scene) == before and not styled_strips(scene), "nothing half-made is imported"
    assert (run_dir / "job.json").is_file() and len(list((run_dir / "frames").glob("*.png"))) == 6
    assert bpy.ops.sequencer.unsample_resume() == {"FINISHED"}
    assert "its unsample pass taken from the cache" in state.message
    assert len(styled_strips(scene)) == 1
    assert not list((run_dir.parent).glob("*-restyle-1")), "resume ran in the same job folder"


def test_two_restyles_asked_at_once_are_queued_on_one_worker(image_strip, tmp_path, monkeypatch):
    scene = bpy.context.scene
    other = add_image_strip(scene, "Other", write_frames(tmp_path / "other", 4), 2, 60)
    started, alive_at_start = [], []
    worker_init = Worker.__init__

    def record_start(self, *args, **kwargs):
        alive_at_start.append(sum(w.process.poll() is None for w in started))
        worker_init(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(Worker, "__init__", record_start)
    RUNNER.enqueue(scene, [image_strip])  # the first Restyle, driven by its timer as below
    monkeypatch.setattr(BatchOperator, "_driving", True)
    second = []

    def press_restyle_again_while_the_first_runs():
        if RUNNER.current and RUNNER.current.worker and not second:
            image_strip.select, other.select = False, True
            second.append(bpy.ops.sequencer.unsample_restyle())

    run_interactively(scene, press_restyle_again_while_the_first_runs)
    assert second == [{"FINISHED"}], "the second press is queued, not refused"
    assert len(started) == 2 and alive_at_start == [0, 0], "a worker starts only once the last one has ended"
    assert all(w.process.poll() is not None for w in started)
    assert {s["unsample_source"] for s in styled_strips(scene)} == {"Shots", "Other"}, RUNNER.outcomes


def test_strip_and_scene_names_with_spaces_accents_and_separators_work(addon, tmp_path):
    scene = video_scene(bpy.context.scene)
    scene.name = "Szene 2/3 ünïcødé"
    strip = add_image_strip(scene, "Clip: a/b\\c ✂", write_frames(tmp_path / "f", 3), 1, 1)
    strip.select = True
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    [styled] = styled_strips(scene)
    assert styled["unsample_source"] == "Clip: a/b\\c ✂"
    folder = bpy.path.abspath(styled.directory)
    assert "/jobs/" in folder and "✂" not in folder and "\\" not in folder.split("/jobs/")[1]
    assert len(strips_of(scene)) == 2


def test_gpu_memory_preferences_reach_the_job(image_strip, tmp_path):
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    prefs.chunk_feed_forward, prefs.vae_batch, prefs.cpu_offload, prefs.vae_tiling = True, 2, True, True
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    [run] = (tmp_path / "cache").glob("jobs/*/runs/*")
    job = json.loads((run / "job.json").read_text(encoding="utf-8"))
    assert (job["chunk_feed_forward"], job["vae_batch"], job["cpu_offload"], job["vae_tiling"]) == (True, 2, True, True)
    assert len(styled_strips(bpy.context.scene)) == 1


def test_out_of_gpu_memory_points_to_the_memory_preferences_and_adds_nothing(image_strip, tmp_path):
    # A worker that runs out of GPU memory, as the real one reports it (this machine has no GPU).
    event = {"type": "error", "code": "out_of_memory", "message": "out of memory. From the cheapest: feed-forward "
             "chunking, fewer frames per VAE call, CPU offload"}  # fmt: skip
    worker = tmp_path / "python-without-gpu-memory"
    worker.write_text(f"#!/bin/sh\necho '{json.dumps(event)}'\nexit 8\n", encoding="utf-8")
    worker.chmod(0o755)
    bpy.context.preferences.addons["blender_unsample"].preferences.worker_python = str(worker)
    scene = bpy.context.scene
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match=r"feed-forward chunking.*Preferences > Add-ons > Unsample.*out_of_memory"):
        bpy.ops.sequencer.unsample_restyle()
    assert snapshot(scene) == before and not styled_strips(scene)


# --- the source strip changed while its job runs --------------------------------------------------


def restyle_changing_the_strip(monkeypatch, change, when="worker") -> set[str]:
    """Press Restyle, and ``change`` the strip once while its job is at ``when`` (export or worker)."""
    changed = []
    tick = RUNNER.tick

    def tick_and_change() -> bool:
        busy = tick()
        job = RUNNER.current
        if job and getattr(job, "exporter" if when == "export" else "worker") is not None and not changed:
            change()
            changed.append(True)
        return busy

    monkeypatch.setattr(RUNNER, "tick", tick_and_change)
    try:
        return bpy.ops.sequencer.unsample_restyle()
    finally:
        assert changed, "the change was made while the job ran"


def the_run_folder(tmp_path) -> Path:
    [run] = (tmp_path / "cache").glob("jobs/*/runs/*")
    return run


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda strip: setattr(strip, "channel", 3), "the strip was moved from channel 1 to 3"),
        (lambda strip: setattr(strip, "frame_start", 40), "the strip was moved from frame 30 to 40"),
        (lambda strip: setattr(strip, "frame_final_duration", 4), "the strip was trimmed from frames 30-35 to 30-33"),
    ],
    ids=["channel", "frames", "trimmed"],
)
def test_a_strip_moved_or_trimmed_during_its_job_gets_nothing_added(
    image_strip, quick_worker, tmp_path, monkeypatch, change, said
):
    scene = bpy.context.scene
    with pytest.raises(RuntimeError, match=f"Shots: {said} while it was being restyled: nothing was added"):
        restyle_changing_the_strip(monkeypatch, lambda: change(image_strip))
    assert not styled_strips(scene) and len(strips_of(scene)) == 1
    out = the_run_folder(tmp_path) / "out"
    assert f"the styled frames are in {out}" in bpy.context.window_manager.unsample.message
    assert len(list(out.glob("frame_*.png"))) == 6, "the styled frames are where the message says"


@pytest.mark.parametrize("when", ["export", "worker"])
def test_a_strip_deleted_during_its_own_job_gets_nothing_added(image_strip, quick_worker, monkeypatch, when):
    scene = bpy.context.scene
    said = "Shots: the strip was renamed or deleted while it was being restyled: nothing was added"
    with pytest.raises(RuntimeError, match=said):
        restyle_changing_the_strip(monkeypatch, lambda: strips_of(scene).remove(image_strip), when)
    assert len(strips_of(scene)) == 0, "nothing was added"
    assert bpy.context.window_manager.unsample.status == "FAILED"


def test_a_strip_renamed_during_its_job_still_gets_its_result(image_strip, quick_worker, monkeypatch):
    scene = bpy.context.scene
    assert restyle_changing_the_strip(monkeypatch, lambda: setattr(image_strip, "name", "Opening shot")) == {"FINISHED"}
    [styled] = styled_strips(scene)
    assert styled["unsample_source"] == "Opening shot" and styled.channel == 2
    assert "edited" not in bpy.context.window_manager.unsample.message


def brighten(strip):
    strip.modifiers["Look"].bright = 0.4


def bend_the_curve(strip):
    strip.modifiers["Curve"].curve_mapping.curves[3].points[0].location = (0.0, 0.3)


def add_a_modifier(strip):
    add_modifier(bpy.context.scene, strip, "More", "BRIGHT_CONTRAST")


def replace_a_file_on_disk(strip):
    """The first image overwritten under its own name, black, as a re-render from elsewhere would."""
    first = Path(bpy.path.abspath(strip.directory)) / strip.elements[0].filename
    image = bpy.data.images.new("re-rendered", 128, 72)
    image.pixels.foreach_set(np.zeros(128 * 72 * 4, dtype=np.float32))
    image.filepath_raw, image.file_format = str(first), "PNG"
    image.save()
    bpy.data.images.remove(image)


@pytest.mark.parametrize(
    "edit",
    [
        lambda strip: setattr(strip, "color_multiply", 0.0),
        lambda strip: setattr(strip.transform, "offset_x", 12.0),
        lambda strip: setattr(strip.crop, "min_x", 8),
        brighten,
        bend_the_curve,
        add_a_modifier,
        replace_a_file_on_disk,
    ],
    ids=["colour", "transform", "crop", "modifier", "curve-point", "new-modifier", "media-replaced"],
)
def test_a_strip_edited_during_its_job_gets_its_result_with_a_warning(
    image_strip, quick_worker, monkeypatch, capfd, edit
):
    scene = bpy.context.scene
    add_modifier(scene, image_strip, "Look", "BRIGHT_CONTRAST")
    add_modifier(scene, image_strip, "Curve", "CURVES")
    assert restyle_changing_the_strip(monkeypatch, lambda: edit(image_strip)) == {"FINISHED"}
    [styled] = styled_strips(scene)
    assert (
        "Warning: Shots: added 'Shots (Unsample)' on channel 2. The strip was edited while it was being restyled: "
        "the new strip shows it as it was when its frames were exported; Restyle again to pick up the edits"
    ) in capfd.readouterr().out
    first = image_pixels(Path(bpy.path.abspath(styled.directory)) / styled.elements[0].filename)
    assert first.reshape(-1, 4)[:, :3].max() > 0.5, "made from the frames as exported, before the edit"


def test_selecting_locking_and_scrubbing_a_strip_during_its_job_is_no_edit(image_strip, quick_worker, monkeypatch):
    scene = bpy.context.scene
    image_strip.color_saturation = 0.5
    image_strip.keyframe_insert("color_saturation", frame=30)
    image_strip.color_saturation = 1.5
    image_strip.keyframe_insert("color_saturation", frame=35)
    scene.frame_set(30)

    def look_around():
        image_strip.select, image_strip.lock = False, True
        image_strip.color_tag = "COLOR_04"
        scene.frame_set(33)  # the animated saturation now reads differently

    assert restyle_changing_the_strip(monkeypatch, look_around) == {"FINISHED"}
    assert image_strip.color_saturation != 0.5, "the playhead moved over the animation"
    assert len(styled_strips(scene)) == 1
    assert "edited" not in bpy.context.window_manager.unsample.message


def test_a_changed_keyframe_is_an_edit(image_strip, quick_worker, monkeypatch):
    image_strip.keyframe_insert("color_saturation", frame=30)

    def rekey():
        image_strip.color_saturation = 0.2
        image_strip.keyframe_insert("color_saturation", frame=30)

    assert restyle_changing_the_strip(monkeypatch, rekey) == {"FINISHED"}
    assert "The strip was edited while it was being restyled" in bpy.context.window_manager.unsample.message


# --- bad input ----------------------------------------------------------------------------------


def select_only(scene, *strips):
    for strip in strips_of(scene):
        strip.select = strip in strips
    scene.sequence_editor.active_strip = strips[-1]


def test_empty_meta_strips_and_strips_inside_a_meta_are_refused_and_skipped_in_a_batch(
    image_strip, quick_worker, tmp_path, capfd
):
    scene = bpy.context.scene
    empty = strips_of(scene).new_meta("Group", 3, 60)
    select_only(scene, empty)
    with pytest.raises(RuntimeError, match="'Group' is an empty meta strip: it holds no strips to restyle"):
        bpy.ops.sequencer.unsample_restyle()  # greyed out, with that tooltip
    inner = add_image_strip(scene, "Inner", write_frames(tmp_path / "inner", 2), 6, 80)
    inner.move_to_meta(strips_of(scene).new_meta("Scenes", 5, 80))
    select_only(scene, inner)
    with pytest.raises(RuntimeError, match="'Inner' is inside a meta strip: restyle the meta strip itself"):
        bpy.ops.sequencer.unsample_restyle()
    select_only(scene, image_strip, empty)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    assert "Warning: Skipped: 'Group' is an empty meta strip" in capfd.readouterr().out
    assert [s["unsample_source"] for s in styled_strips(scene)] == ["Shots"]


def test_strips_whose_media_is_missing_are_named_and_the_rest_of_the_batch_runs(
    image_strip, quick_worker, tmp_path, capfd
):
    scene = bpy.context.scene
    movie_file = write_movie(tmp_path / "gone.mp4", write_frames(tmp_path / "movie-src", 4))
    movie = strips_of(scene).new_movie("Interview", str(movie_file), 2, 1, fit_method="FIT")
    images = add_image_strip(scene, "Stills", write_frames(tmp_path / "stills", 3), 3, 10)
    movie_file.unlink()
    for frame in (tmp_path / "stills").glob("*.png"):
        frame.unlink()
    select_only(scene, movie)
    with pytest.raises(RuntimeError, match=f"'Interview' is missing its media: {movie_file}"):
        bpy.ops.sequencer.unsample_restyle()
    select_only(scene, movie, images, image_strip)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    out = capfd.readouterr().out
    assert f"Warning: Skipped: 'Interview' is missing its media: {movie_file}" in out
    stills = tmp_path / "stills"
    assert f"Warning: Skipped: 'Stills' is missing its media: 3 images in {stills}, e.g. src_0000.png" in out
    assert [s["unsample_source"] for s in styled_strips(scene)] == ["Shots"]


def test_media_deleted_while_its_strip_waits_in_the_batch_is_named(image_strip, quick_worker, tmp_path):
    scene = bpy.context.scene
    later = add_image_strip(scene, "Later", write_frames(tmp_path / "later", 3), 1, 50)
    RUNNER.enqueue(scene, [image_strip, later])

    def delete_the_files_once_running():
        if RUNNER.current and RUNNER.current.ref.name == "Shots":
            for frame in (tmp_path / "later").glob("*.png"):
                frame.unlink(missing_ok=True)

    run_interactively(scene, delete_the_files_once_running)
    assert [(o.strip, o.ok) for o in RUNNER.outcomes] == [("Shots", True), ("Later", False)]
    assert f"'Later' is missing its media: 3 images in {tmp_path / 'later'}" in RUNNER.outcomes[1].message
    assert [s["unsample_source"] for s in styled_strips(scene)] == ["Shots"]


def test_a_cache_folder_that_cannot_be_made_is_named_with_the_preference(image_strip, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    bpy.context.preferences.addons["blender_unsample"].preferences.cache_folder = str(blocker / "cache")
    folder = re.escape(str(blocker / "cache" / "jobs"))
    said = rf"Cannot create the job folder {folder}/\S+: Not a directory\. Check the Cache Folder preference"
    with pytest.raises(RuntimeError, match=said):
        bpy.ops.sequencer.unsample_restyle()
    assert not RUNNER.busy and not styled_strips(bpy.context.scene)


# --- the .blend and the network -------------------------------------------------------------------


def test_the_saved_blend_and_the_source_strip_are_untouched_by_a_restyle_and_a_failed_one(image_strip, tmp_path):
    scene = bpy.context.scene
    add_modifier(scene, image_strip, "Look", "BRIGHT_CONTRAST").contrast = 0.2
    image_strip.transform.offset_x, image_strip.crop.max_y, image_strip.color_saturation = 4.0, 2, 1.3
    blend = tmp_path / "edit.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))  # makes the strip's folder relative ("//images/")
    saved, before = blend.read_bytes(), rna_state(image_strip)
    scenes = [(s.name, s.use_fake_user) for s in bpy.data.scenes]
    assert image_strip.directory.startswith("//")
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    assert "added" in bpy.context.window_manager.unsample.message
    assert "edited" not in bpy.context.window_manager.unsample.message, "an untouched strip is not reported edited"
    scene.unsample.checkpoint = str(tmp_path / "no-such-model")
    select_only(scene, image_strip)
    with pytest.raises(RuntimeError, match="no-such-model"):
        bpy.ops.sequencer.unsample_restyle()
    assert blend.read_bytes() == saved and bpy.data.filepath == str(blend)
    assert rna_state(strips_of(scene)["Shots"]) == before
    assert [(s.name, s.use_fake_user) for s in bpy.data.scenes] == scenes


@pytest.mark.parametrize(("online", "preference"), [(False, False), (False, True), (True, False), (True, True)])
def test_models_are_downloaded_only_with_online_access_and_the_preference(image_strip, monkeypatch, online, preference):
    monkeypatch.setattr(looked_up, "online_access", lambda: online)
    bpy.context.preferences.addons["blender_unsample"].preferences.allow_downloads = preference
    RUNNER.enqueue(bpy.context.scene, [image_strip])
    RUNNER.tick()  # works out the job's settings and starts exporting
    assert RUNNER.current.spec.allow_download is (online and preference)
