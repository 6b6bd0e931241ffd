"""The extension end to end in real Blender: strips in, styled strips out, on tiny models."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import bpy
import numpy as np
import pytest
from conftest import (
    add_image_strip,
    image_pixels,
    poll_message,
    run_interactively,
    snapshot,
    strips_of,
    styled_strips,
    video_scene,
    write_frames,
)

from blender_unsample.addon.jobs.runner import RUNNER
from blender_unsample.addon.operators import (
    SEQUENCER_OT_unsample_cancel,
    SEQUENCER_OT_unsample_preview,
    SEQUENCER_OT_unsample_restyle,
)
from blender_unsample.addon.ui import menus, panel


def check_styled(scene, source, before, active=True):
    [styled] = [s for s in styled_strips(scene) if s["unsample_source"] == source.name]
    assert styled.type == "IMAGE"
    assert styled.frame_final_start == source.frame_final_start
    assert styled.frame_final_duration == source.frame_final_duration
    assert styled.channel > source.channel
    assert styled.select and (scene.sequence_editor.active_strip == styled) == active
    assert not source.select
    assert json.loads(styled["unsample_settings"])["prompt"] == "an oil painting"
    assert snapshot(scene)[source.name] == before[source.name], "the source strip must not change"
    folder = bpy.path.abspath(styled.directory)
    first = image_pixels(f"{folder}/{styled.elements[0].filename}")
    exported = image_pixels(f"{folder}/../frames/frame_000000.png")
    assert np.abs(first - exported).mean() > 0.02, "the styled frame must differ from the source frame"
    return styled


def test_panel_sub_panels_operators_and_menu_entries_are_registered(addon):
    for cls in (*panel.classes, SEQUENCER_OT_unsample_restyle, SEQUENCER_OT_unsample_preview):
        assert cls.is_registered
    panels = [c for c in panel.classes if issubclass(c, bpy.types.Panel)]
    assert {c.bl_label for c in panels} == {"Unsample", "Prompts", "Models", "Sampling", "Control", "Frames"}
    assert all(c.bl_category == "Unsample" and c.bl_region_type == "UI" for c in panels)
    for operator in ("unsample_restyle", "unsample_preview", "unsample_cancel"):
        assert hasattr(bpy.ops.sequencer, operator)
    for name in menus.MENUS:
        assert menus.draw_entries in getattr(bpy.types, name).draw._draw_funcs


def test_poll_explains_why_the_buttons_are_grey(addon, tmp_path):
    scene = bpy.context.scene
    assert poll_message(SEQUENCER_OT_unsample_restyle, bpy.context) == (False, "This scene has no sequencer strips")
    video_scene(scene)
    try:  # Blender 5.0 takes a length, 4.2 an end frame
        color = strips_of(scene).new_effect("Color", "COLOR", 1, frame_start=1, length=10)
    except TypeError:
        color = strips_of(scene).new_effect("Color", "COLOR", 1, frame_start=1, frame_end=11)
    color.select = False
    scene.sequence_editor.active_strip = None
    assert poll_message(SEQUENCER_OT_unsample_restyle, bpy.context)[1] == "Select a movie, image, scene or meta strip"
    color.select = True
    ok, message = poll_message(SEQUENCER_OT_unsample_restyle, bpy.context)
    assert not ok and "only movie, image, scene and meta strips" in message
    frames = write_frames(tmp_path / "f", 2)
    image = strips_of(scene).new_image("Shots", str(frames[0]), 2, 1)
    image.select, color.select = True, False
    scene.sequence_editor.active_strip = image
    assert poll_message(SEQUENCER_OT_unsample_restyle, bpy.context)[0]
    scene.unsample.prompt = ""
    assert poll_message(SEQUENCER_OT_unsample_restyle, bpy.context) == (False, "Type a style prompt first")
    assert poll_message(SEQUENCER_OT_unsample_cancel, bpy.context) == (False, "No restyle is running")


def test_a_trimmed_movie_strip_becomes_a_styled_strip_above_it(movie_strip):
    scene = bpy.context.scene
    before = snapshot(scene)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    styled = check_styled(scene, movie_strip, before)
    assert styled.frame_final_duration == 14 - 2 - 1
    assert scene.unsample.prompt == "an oil painting"
    state = bpy.context.window_manager.unsample
    assert state.status == "FINISHED" and "added" in state.message


def test_an_image_sequence_strip_becomes_a_styled_strip(image_strip):
    scene = bpy.context.scene
    before = snapshot(scene)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    check_styled(scene, image_strip, before)


def test_a_batch_of_two_selected_strips_gives_two_styled_strips(image_strip, tmp_path):
    scene = bpy.context.scene
    frames = write_frames(tmp_path / "more", 5)
    second = add_image_strip(scene, "More", frames, 1, 40)
    second.select = image_strip.select = True
    before = snapshot(scene)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    check_styled(scene, image_strip, before, active=False)
    check_styled(scene, second, before)
    assert [o.ok for o in RUNNER.outcomes] == [True, True]


def test_main_thread_ticks_are_measured_during_a_job(image_strip):
    scene = bpy.context.scene
    RUNNER.enqueue(scene, [image_strip])
    durations = run_interactively(scene)
    assert len(styled_strips(scene)) == 1
    # A measurement for the report, not a timed assertion: written next to the test results.
    report = {
        "blender": bpy.app.version_string,
        "ticks": len(durations),
        "longest_ms": round(max(durations) * 1000, 2),
        "median_ms": round(sorted(durations)[len(durations) // 2] * 1000, 3),
    }
    print(f"\nmain-thread ticks during a job: {report}")
    results = Path(__file__).resolve().parents[2] / "build" / "test-results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"ticks-blender-{bpy.app.version[0]}.{bpy.app.version[1]}.json").write_text(json.dumps(report))


def test_cancel_leaves_the_sequencer_as_it_was(image_strip):
    scene = bpy.context.scene
    before = snapshot(scene)
    RUNNER.enqueue(scene, [image_strip])
    state = bpy.context.window_manager.unsample

    def cancel_once_running():
        if state.status == "RUNNING" and state.stage.startswith(("Unsampling", "Restyling", "Encoding")):
            RUNNER.cancel()

    run_interactively(scene, cancel_once_running)
    assert state.status == "CANCELLED"
    assert snapshot(scene) == before
    assert not styled_strips(scene)


def test_a_strip_moved_during_its_job_gets_no_result_in_the_wrong_place(image_strip):
    scene = bpy.context.scene
    RUNNER.enqueue(scene, [image_strip])
    state = bpy.context.window_manager.unsample

    def move_once_running():
        if state.status == "RUNNING" and image_strip.frame_start == 30:
            image_strip.frame_start = 50

    run_interactively(scene, move_once_running)
    assert not styled_strips(scene)
    assert state.status == "FAILED"
    assert "the strip was moved from frame 30 to 50 while it was being restyled" in state.message


def test_preview_restyles_a_window_at_the_playhead_and_the_full_run_replaces_it(movie_strip):
    scene = bpy.context.scene
    scene.unsample.context = 4
    scene.frame_current = movie_strip.frame_final_start + 5
    assert bpy.ops.sequencer.unsample_preview() == {"FINISHED"}
    [preview] = styled_strips(scene)
    assert preview.get("unsample_preview")
    assert preview.frame_final_duration == 4
    assert preview.frame_final_start == scene.frame_current - 2
    scene.sequence_editor.active_strip = movie_strip
    assert bpy.ops.sequencer.unsample_preview() == {"FINISHED"}
    assert len(styled_strips(scene)) == 1, "a new preview replaces the old one"
    movie_strip.select = True
    for strip in styled_strips(scene):
        strip.select = False
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    [final] = styled_strips(scene)
    assert not final.get("unsample_preview")
    assert final.frame_final_duration == movie_strip.frame_final_duration


def test_scene_and_meta_strips_are_restyled_from_their_rendered_result(addon, tmp_path):
    scene = video_scene(bpy.context.scene)
    frames = write_frames(tmp_path / "frames", 5)
    source = video_scene(bpy.data.scenes.new("Source"))
    add_image_strip(source, "Inner", frames, 1, 1)
    source.frame_start, source.frame_end = 1, 5
    scene_strip = strips_of(scene).new_scene("Shot", source, 1, 1)
    scene_strip.scene_input = "SEQUENCER"
    meta = strips_of(scene).new_meta("Group", 3, 20)
    member = add_image_strip(scene, "Member", frames, 4, 20)
    member.move_to_meta(meta)
    scene_strip.select = meta.select = True
    before = snapshot(scene)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}, [o.message for o in RUNNER.outcomes]
    check_styled(scene, scene_strip, before, active=False)
    check_styled(scene, meta, before)


def test_undo_removes_the_styled_strip_and_keeps_the_source(image_strip):
    scene = bpy.context.scene
    bpy.ops.ed.undo_push(message="the user's last edit")
    before = snapshot(scene)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    assert len(styled_strips(bpy.context.scene)) == 1
    bpy.ops.ed.undo()
    scene = bpy.context.scene  # undo reloads the data: fetch it again
    assert not styled_strips(scene)
    assert snapshot(scene) == before


def test_a_failing_worker_is_reported_with_its_reason_and_adds_nothing(image_strip, tmp_path):
    scene = bpy.context.scene
    # A Hub id not in the cache: a path that does not exist would grey Restyle before any job.
    scene.unsample.checkpoint = "unsample-tests/no-such-model"
    before = snapshot(scene)
    with pytest.raises(RuntimeError, match="no-such-model is not in the Hugging Face cache"):  # scripts see it
        bpy.ops.sequencer.unsample_restyle()
    state = bpy.context.window_manager.unsample
    assert state.status == "FAILED"
    assert "then press Restyle: Resume would run the same settings again) [model_not_found]" in state.message
    assert snapshot(scene) == before and not styled_strips(scene)
    [run] = (tmp_path / "cache").glob("jobs/*/runs/*")
    assert (run / "job.json").is_file() and (run / "frames" / "frame_000000.png").is_file(), "the job folder is kept"


def test_model_names_are_found_in_the_models_folder_preference(addon, tiny_models):
    from blender_unsample.addon.properties import job_spec

    settings = bpy.context.scene.unsample
    folder = str(Path(tiny_models["checkpoint"]).parent)
    settings.checkpoint, settings.motion_module = "checkpoint", "guoyww/animatediff-motion-adapter-v1-5-2"
    spec = job_spec(settings, "in", "out", (64, 40), folder)
    assert spec.model == tiny_models["checkpoint"]
    assert spec.motion_adapter == "guoyww/animatediff-motion-adapter-v1-5-2", "Hub ids stay Hub ids"
    settings.use_motion_module = False
    assert job_spec(settings, "in", "out", (64, 40), folder).motion_adapter == "none"


def test_a_queued_strip_deleted_before_its_turn_is_skipped_with_a_reason(image_strip, tmp_path):
    scene = bpy.context.scene
    second = add_image_strip(scene, "More", write_frames(tmp_path / "more", 3), 1, 40)
    RUNNER.enqueue(scene, [image_strip, second])
    state = bpy.context.window_manager.unsample

    def delete_second_once_running():
        if state.status == "RUNNING" and strips_of(scene).get("More"):
            strips_of(scene).remove(strips_of(scene)["More"])

    run_interactively(scene, delete_second_once_running)
    assert [(o.strip, o.ok) for o in RUNNER.outcomes] == [("Shots", True), ("More", False)]
    assert RUNNER.outcomes[1].message == "the strip was renamed or deleted before its turn: nothing was restyled"
    assert "1 of 2 strips restyled" in state.message


def test_a_missing_worker_python_is_named(image_strip, tmp_path):
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    prefs.worker_python = str(tmp_path / "no-python")
    # Said by the job's start, or by the refusal if the worker check (started by poll) beat it there.
    with pytest.raises(RuntimeError, match=r"(?i)cannot start the worker Python .*no-python.*Worker Python preference"):
        bpy.ops.sequencer.unsample_restyle()
    assert not styled_strips(bpy.context.scene)


def test_the_worker_python_is_asked_what_it_can_do(addon):
    from blender_unsample.addon.prefs import worker_python
    from blender_unsample.addon.worker.process import forget_worker_reports

    forget_worker_reports()
    report = worker_report_for(worker_python())
    assert report["missing"] == [] and report["packages"]["torch"].startswith("2.")
    assert report["devices"][-1] == "cpu"


def test_a_worker_python_without_torch_greys_restyle_with_the_fix_named(image_strip, tmp_path):
    import subprocess
    import sys

    from blender_unsample.addon.worker.process import worker_command, worker_environment

    # A fresh install's worker Python: a virtual environment of this Python without its packages.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    python = str(tmp_path / "bare" / "bin" / "python")
    bpy.context.preferences.addons["blender_unsample"].preferences.worker_python = python
    assert "torch" in worker_report_for(python)["missing"]
    fix = r"lacks torch.*Set Up Worker.*Worker Python"
    ok, message = poll_message(SEQUENCER_OT_unsample_restyle, bpy.context)
    assert not ok and re.search(fix, message), "greyed, with the fix in its tooltip"
    with pytest.raises(RuntimeError, match=fix):
        bpy.ops.sequencer.unsample_restyle()  # a script is refused with the same words
    assert not RUNNER.busy and not styled_strips(bpy.context.scene)

    # The worker's own check stays, for a job started before the panel's check is in, or from a shell.
    result = subprocess.run(
        worker_command(python, "restyle", "--progress", "json"),
        env=worker_environment(python),
        capture_output=True,
        text=True,
        timeout=120,
    )
    error = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == 10 and error["code"] == "worker_setup"
    assert re.search(r"lacks torch.*Worker Python preference", error["message"])


def worker_report_for(python: str) -> dict:
    """The report as the buttons see it (a first report counts once it has settled)."""
    from blender_unsample.addon.worker.process import settled_worker_report

    deadline = time.monotonic() + 120
    while (report := settled_worker_report(python)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return report


def test_switching_the_family_to_sdxl_restyles_with_sdxl_models(image_strip, tiny_sdxl):
    from blender_unsample.addon.properties import processing_size

    scene = bpy.context.scene
    settings = scene.unsample
    settings.resolution = "MODEL"
    assert processing_size(settings, scene) == (680, 384)  # about 512 squared pixels at 16:9
    settings.family = "sdxl"
    assert processing_size(settings, scene) == (1368, 768)  # SDXL: about 1024 squared
    settings.resolution = "CUSTOM"
    settings.checkpoint = tiny_sdxl["checkpoint"]
    settings.motion_module = tiny_sdxl["motion_adapter"]
    settings.controlnet_model = tiny_sdxl["controlnet"]
    before = snapshot(scene)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}, [o.message for o in RUNNER.outcomes]
    styled = check_styled(scene, image_strip, before)
    assert json.loads(styled["unsample_settings"])["family"] == "sdxl"


def test_the_lora_list_and_config_folder_reach_the_job(addon, tmp_path):
    from blender_unsample.addon.properties import job_spec

    settings = bpy.context.scene.unsample
    for name in ("a.safetensors", "b.safetensors", "c.safetensors"):
        assert bpy.ops.sequencer.unsample_lora_add(filepath=str(tmp_path / name)) == {"FINISHED"}
    settings.loras[1].weight = 0.0  # weight 0: left out
    settings.loras[2].enabled = False
    settings.loras[0].weight = 0.75
    settings.checkpoint, settings.config = str(tmp_path / "model.safetensors"), str(tmp_path / "configs")
    spec = job_spec(settings, "in", "out", (64, 40))
    assert spec.loras == [f"{tmp_path / 'a.safetensors'}=0.75"]
    assert spec.config == str(tmp_path / "configs")
    settings.lora_index = 0
    assert bpy.ops.sequencer.unsample_lora_remove() == {"FINISHED"}
    assert [Path(lora.path).name for lora in settings.loras] == ["b.safetensors", "c.safetensors"]


def test_a_second_style_reuses_the_cached_unsample_pass_and_the_cache_can_be_cleared(image_strip, capfd):
    from blender_unsample.addon.jobs.paths import cache_usage
    from blender_unsample.addon.prefs import latent_cache_folder

    scene = bpy.context.scene
    settings = scene.unsample
    settings.unsample_prompt_mode, settings.unsample_prompt = "SOURCE", "a yellow square over a gradient"
    state = bpy.context.window_manager.unsample
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    assert "from the cache" not in state.message
    assert cache_usage(latent_cache_folder()) > 0
    settings.prompt = "a pencil drawing"
    for strip in styled_strips(scene):
        strip.select = False
    image_strip.select = True
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    assert "its unsample pass taken from the cache" in state.message
    size = cache_usage(latent_cache_folder())
    capfd.readouterr()
    assert bpy.ops.sequencer.unsample_clear_cache() == {"FINISHED"}
    assert cache_usage(latent_cache_folder()) == 0
    # a few tiny entries are kilobytes: the report says how many, not "0 MB"
    assert f"Unsample cache cleared: {size / 1024:.0f} KB freed" in capfd.readouterr().out


def test_preview_follows_the_scenes_preview_range_when_one_is_set(movie_strip):
    scene = bpy.context.scene
    scene.use_preview_range = True
    scene.frame_preview_start, scene.frame_preview_end = 4, 9  # the strip shows frames 3 to 13
    assert bpy.ops.sequencer.unsample_preview() == {"FINISHED"}
    [preview] = styled_strips(scene)
    assert (preview.frame_final_start, preview.frame_final_duration) == (4, 6)
