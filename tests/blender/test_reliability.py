"""Faults in real Blender: a killed worker, two restyles at once, awkward names, GPU memory;
nothing lost."""

from __future__ import annotations

import json
import os
import signal

import bpy
import pytest
from conftest import add_image_strip, run_interactively, snapshot, strips_of, styled_strips, video_scene, write_frames

from blender_unsample.addon.runner import RUNNER


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


def test_two_restyles_asked_at_once_are_queued_on_one_worker(image_strip, tmp_path):
    scene = bpy.context.scene
    other = add_image_strip(scene, "Other", write_frames(tmp_path / "other", 4), 2, 60)
    RUNNER.enqueue(scene, [image_strip])
    workers_at_once, asked = [], []

    def second_restyle_while_the_first_runs():
        if RUNNER.current and RUNNER.current.worker and not asked:
            asked.append(RUNNER.enqueue(scene, [other]))  # as a second press of Restyle would
        jobs = [job for job in (RUNNER.current, *RUNNER.queue) if job and job.worker]
        workers_at_once.append(sum(job.worker.exit_code is None for job in jobs))

    run_interactively(scene, second_restyle_while_the_first_runs)
    assert max(workers_at_once) == 1
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
