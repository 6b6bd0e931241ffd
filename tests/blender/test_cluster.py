"""The Cluster preference in real Blender: the worker's --cluster arguments, Check Cluster, a batch of
strips on one worker with each strip's result imported as it lands, cancel, and bad input.

Two tests run real jobs on a local Ray (This Machine's GPUs: on a machine without GPUs the worker
uses CPU workers); the rest use stand-in workers or none.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import bpy
import pytest
from conftest import (
    add_image_strip,
    poll_message,
    run_interactively,
    snapshot,
    styled_strips,
    worker_python,
    write_frames,
)
from test_prompts import draw, labels
from test_restyle import check_styled

from blender_unsample.addon.jobs.runner import RUNNER
from blender_unsample.addon.operators import (
    SEQUENCER_OT_unsample_check_cluster,
    SEQUENCER_OT_unsample_preview,
    SEQUENCER_OT_unsample_restyle,
)
from blender_unsample.addon.ui import panel
from blender_unsample.addon.worker import cluster
from blender_unsample.addon.worker.process import Worker


@pytest.fixture
def started(monkeypatch) -> list[Worker]:
    """Every worker the runner starts, in order."""
    workers = []
    start = Worker.__init__

    def record(self, python, args, log_path):
        start(self, python, args, log_path)
        self.args = args
        workers.append(self)

    monkeypatch.setattr(Worker, "__init__", record)
    return workers


def use_cluster(cluster_setting: str, address: str = "") -> None:
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    prefs.cluster, prefs.cluster_address = cluster_setting, address


def job_files(args: list[str]) -> list[Path]:
    return [Path(args[i + 1]) for i, a in enumerate(args) if a == "--job"]


def second_strip(tmp_path, name="More", frames=4, start=40):
    return add_image_strip(bpy.context.scene, name, write_frames(tmp_path / name, frames), 1, start)


# --- the setting reaches the worker; bad input is refused before anything starts -----------------------


@pytest.mark.parametrize(
    ("setting", "address", "expected"),
    [
        ("NONE", "", []),
        ("LOCAL", "", ["--cluster", "auto"]),
        ("ADDRESS", " head-node:6379 ", ["--cluster", "head-node:6379"]),
    ],
    ids=["none", "this-machine", "address"],
)
def test_the_worker_gets_the_cluster_setting(image_strip, quick_worker, started, setting, address, expected):
    use_cluster(setting, address)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    [worker] = started
    [job] = job_files(worker.args)
    assert worker.args == ["restyle", "--job", str(job), *expected, "--progress", "json", "--stdin-control"]
    assert len(styled_strips(bpy.context.scene)) == 1


def test_a_preview_runs_on_the_worker_alone_whatever_the_cluster(image_strip, quick_worker, started):
    use_cluster("LOCAL")  # a preview is one context window: a cluster would add only its start-up
    assert bpy.ops.sequencer.unsample_preview() == {"FINISHED"}
    assert "--cluster" not in started[0].args


def test_an_unusable_cluster_address_greys_restyle_and_check_cluster_with_the_reason(image_strip):
    scene, context = bpy.context.scene, bpy.context
    use_cluster("ADDRESS", "")
    ok, message = poll_message(SEQUENCER_OT_unsample_restyle, context)
    assert not ok and "Cluster is set to a Ray cluster, but its address is empty" in message
    assert poll_message(SEQUENCER_OT_unsample_check_cluster, context) == (False, message)
    assert poll_message(SEQUENCER_OT_unsample_preview, context)[0], "a preview does not use the cluster"
    assert "its address is empty" in labels(draw(panel.SEQUENCER_PT_unsample, scene)), "said above the prompt"
    assert "its address is empty" in labels(draw(panel.SEQUENCER_PT_unsample_models, scene))
    use_cluster("ADDRESS", "head node:6379")
    assert "'head node:6379' is not a Ray cluster address" in poll_message(SEQUENCER_OT_unsample_restyle, context)[1]
    use_cluster("NONE", "head node:6379")
    assert poll_message(SEQUENCER_OT_unsample_restyle, context)[0]
    ok, message = poll_message(SEQUENCER_OT_unsample_check_cluster, context)
    assert not ok and "Cluster is None" in message
    assert "Cluster" not in labels(draw(panel.SEQUENCER_PT_unsample_models, scene))


def test_the_preferences_show_the_cluster_setting_its_address_and_check_cluster(addon):
    from test_prompts import draw_preferences

    check = "sequencer.unsample_check_cluster"
    remote = ["cluster", "cluster_address", "cluster_token_file", "cluster_allow_unauthenticated", check]
    shown_for = {"NONE": [], "LOCAL": ["cluster", check], "ADDRESS": remote}
    for setting, shown in shown_for.items():
        use_cluster(setting, "head-node:6379")
        drawn = draw_preferences(addon)
        names = [bound.get("property") or bound.get("operator") or "" for _, bound, _ in drawn]
        first = names.index("cluster")
        assert names[first - 1] == "device"
        assert [n for n in names[first:] if "cluster" in n] == (shown or ["cluster"])


def test_a_worker_without_ray_is_pointed_to_set_up_worker(addon, tmp_path):
    from blender_unsample.addon.worker.environment import CLUSTER_REQUIREMENTS, REQUIREMENTS, plan

    install = plan("/py", tmp_path, "", cluster=True)[-2].command
    assert install[-4:] == ["-r", str(REQUIREMENTS), "-r", str(CLUSTER_REQUIREMENTS)]
    assert CLUSTER_REQUIREMENTS.read_text(encoding="utf-8").count("ray[client]==") == 1
    assert str(CLUSTER_REQUIREMENTS) not in plan("/py", tmp_path, "")[-2].command
    message = "Ray is not installed in the worker Python: install the cluster extra"
    assert cluster.setup_hint(message) == " Set Up Worker installs Ray while Cluster is on."
    assert cluster.setup_hint("the array is too small to install") == ""
    assert cluster.setup_hint("lacks Ray: pip install it, or press Set Up Worker") == "", "said once"


def test_a_restyle_on_a_worker_python_without_ray_shows_the_engines_message_and_set_up_worker(image_strip, tmp_path):
    """The worker Python has torch but no Ray: the job's real error reaches the panel and the report,
    pointing at Set Up Worker."""
    no_ray = tmp_path / "no-ray"
    (no_ray / "ray").mkdir(parents=True)
    (no_ray / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    python = tmp_path / "python-without-ray"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={no_ray} exec {worker_python()} "$@"\n', encoding="utf-8")
    python.chmod(0o755)
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    prefs.worker_python = str(python)
    use_cluster("LOCAL")
    with pytest.raises(RuntimeError) as error:
        bpy.ops.sequencer.unsample_restyle()
    state = bpy.context.window_manager.unsample
    for said in (str(error.value), state.message):
        assert "a cluster needs Ray in the worker's Python" in said, said
        assert "Set Up Worker" in said and "[worker_setup]" in said, said
    assert not styled_strips(bpy.context.scene)


@pytest.mark.parametrize(
    ("report", "text"),
    [
        ({"ok": True, "nodes": 2, "gpus": 4, "cpus": 64}, "4 GPUs on 2 nodes"),
        ({"ok": True, "nodes": 1, "gpus": 1, "cpus": 8}, "1 GPU on 1 node"),
        ({"ok": True, "nodes": 1, "gpus": 0, "cpus": 2}, "0 GPUs on 1 node: jobs run on its 2 CPUs"),
        ({"ok": False, "error": "the Ray cluster at x:1 does not answer"}, "the Ray cluster at x:1 does not answer"),
    ],
)
def test_a_cluster_check_is_said_in_a_few_words(report, text):
    assert cluster.describe(report) == text


# --- Check Cluster ---------------------------------------------------------------------------------


def test_check_cluster_says_within_seconds_why_a_cluster_cannot_be_used(addon):
    scene = bpy.context.scene
    use_cluster("ADDRESS", "127.0.0.1:1")  # nothing listens there; the real worker asks
    assert "Cluster: 127.0.0.1:1, not checked yet" in labels(draw(panel.SEQUENCER_PT_unsample_models, scene))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"Cluster: the Ray cluster at 127\.0\.0\.1:1 does not answer"):
        bpy.ops.sequencer.unsample_check_cluster()
    assert time.monotonic() - started < 60, "an address that does not answer is said within seconds"
    assert "does not answer" in labels(draw(panel.SEQUENCER_PT_unsample_models, scene)).replace("  ", " ")


# A stand-in worker for the check's success: the real one starts a local Ray for it (20-30 s here), and
# this machine has no GPU to show. It answers the panel's plain doctor as a worker with torch would.
DOCTOR = """#!/bin/sh
case "$*" in
  *"doctor --cluster auto"*) sleep 1; echo '{"ok": true, "address": "auto", "nodes": 2, "gpus": 4, "cpus": 32}';;
  *) echo '{"packages": {"torch": "2.13.0"}, "missing": [], "devices": ["cpu"]}';;
esac
"""


def test_check_cluster_shows_the_gpus_and_nodes_of_the_cluster_in_the_panel(addon, tmp_path):
    scene = bpy.context.scene
    doctor = tmp_path / "doctor"
    doctor.write_text(DOCTOR, encoding="utf-8")
    doctor.chmod(0o755)
    addon.worker_python = str(doctor)
    use_cluster("LOCAL")
    assert "Cluster: This Machine's GPUs, not checked yet" in labels(draw(panel.SEQUENCER_PT_unsample_models, scene))
    # The button's way (invoke; in background mode bpy.ops runs execute): the check runs on a thread.
    button = SimpleNamespace(report=lambda *args: None)
    assert SEQUENCER_OT_unsample_check_cluster.invoke(button, bpy.context, None) == {"FINISHED"}, "returns at once"
    assert "Checking the cluster (This Machine's GPUs)" in labels(draw(panel.SEQUENCER_PT_unsample_models, scene))
    assert poll_message(SEQUENCER_OT_unsample_check_cluster, bpy.context) == (False, "The cluster is being checked")
    deadline = time.monotonic() + 30
    while cluster.checking() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "Cluster: 4 GPUs on 2 nodes" in labels(draw(panel.SEQUENCER_PT_unsample_models, scene))
    assert bpy.ops.sequencer.unsample_check_cluster() == {"FINISHED"}, "and again, waiting for the answer"


# --- a batch on one worker, with a stand-in worker ----------------------------------------------------

# Takes every --job, says where it is as the real worker does, finishes them last to first (the order
# results land in on a cluster is not the order of the strips) and fails the job QUICK_FAIL_JOB names.
BATCH_WORKER = """#!{python}
import json, os, shutil, sys, time
from pathlib import Path
args = sys.argv
if "doctor" in args:  # the panel's check of the worker Python: it has what a worker needs
    print(json.dumps({{"python": args[0], "packages": {{"torch": "2.13.0"}}, "missing": [], "devices": ["cpu"]}}))
    sys.exit(0)
jobs = [json.loads(Path(args[i + 1]).read_text(encoding="utf-8")) for i, a in enumerate(args) if a == "--job"]
def say(**event):
    print(json.dumps(event), flush=True)
failed = None
for done, i in enumerate(reversed(range(len(jobs)))):
    out, frames = Path(jobs[i]["out"]), sorted(Path(jobs[i]["frames"]).glob("*.png"))
    say(type="progress", stage="resample", step=1, total=2, window=1, windows=1, fraction=0.5, job=i,
        jobs=len(jobs), batch_fraction=(done + 0.5) / len(jobs), batch_eta=7.0)
    time.sleep(0.5)
    if os.environ.get("QUICK_FAIL_JOB") == str(i):
        say(type="error", code="bad_frames", message="frame 2 is unreadable", job=i)
        failed = failed or 4
        continue
    out.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        shutil.copy(frame, out / frame.name)
    say(type="done", frames=len(frames), out=str(out), seconds=0.1, job=i)
sys.exit(failed or 0)
"""


@pytest.fixture
def batch_worker(addon, tmp_path):
    script = tmp_path / "batch-worker"
    script.write_text(BATCH_WORKER.format(python=sys.executable), encoding="utf-8")
    script.chmod(0o755)
    addon.worker_python = str(script)
    return script


def test_a_batch_on_the_cluster_runs_on_one_worker_and_each_strip_is_added_as_it_lands(
    image_strip, batch_worker, started, tmp_path, monkeypatch
):
    scene = bpy.context.scene
    use_cluster("LOCAL")
    more = second_strip(tmp_path)
    third = second_strip(tmp_path, "Third", 3, 60)
    monkeypatch.setenv("QUICK_FAIL_JOB", "1")  # the second strip's job fails; the others go on
    before = snapshot(scene)
    RUNNER.enqueue(scene, [image_strip, more, third])
    seen = set()

    def look_at_the_panel():
        drawn = labels(draw(panel.SEQUENCER_PT_unsample, scene))
        if "strips done on the cluster" in drawn and bpy.context.window_manager.unsample.stage.startswith("Restyling"):
            seen.add(drawn[drawn.index("Strip") : drawn.index("Strip") + 12])
            assert "0:07 left" in drawn, "the batch's ETA"

    run_interactively(scene, look_at_the_panel)
    [worker] = started
    jobs = [json.loads(f.read_text(encoding="utf-8")) for f in job_files(worker.args)]
    assert [len(list(Path(job["frames"]).glob("*.png"))) for job in jobs] == [6, 4, 3], "in the strips' order"
    assert worker.args[-5:] == ["--cluster", "auto", "--progress", "json", "--stdin-control"]
    assert seen == {"Strip 3 of 3", "Strip 2 of 3", "Strip 1 of 3"}, "each strip's progress, as it comes"
    assert [(o.strip, o.ok) for o in RUNNER.outcomes] == [("Third", True), ("More", False), ("Shots", True)]
    assert "frame 2 is unreadable [bad_frames]" in RUNNER.outcomes[1].message
    assert {s["unsample_source"] for s in styled_strips(scene)} == {"Shots", "Third"}
    check_styled_copy(scene, image_strip, before)
    check_styled_copy(scene, third, before)
    state = bpy.context.window_manager.unsample
    assert state.status == "FAILED" and "2 of 3 strips restyled; More: frame 2 is unreadable" in state.message

    monkeypatch.delenv("QUICK_FAIL_JOB")
    assert bpy.ops.sequencer.unsample_resume() == {"FINISHED"}, "the failed strip was kept for Resume"
    assert {s["unsample_source"] for s in styled_strips(scene)} == {"Shots", "Third", "More"}
    assert started[-1].args[-5:-3] == ["--cluster", "auto"]


def check_styled_copy(scene, source, before):
    """The stand-in worker's result: a strip above the source, of its frames, the source untouched."""
    [styled] = [s for s in styled_strips(scene) if s["unsample_source"] == source.name]
    assert styled.channel > source.channel
    assert (styled.frame_final_start, styled.frame_final_duration) == (
        source.frame_final_start,
        source.frame_final_duration,
    )
    assert snapshot(scene)[source.name] == before[source.name]


# --- real jobs on a local Ray ------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (Linux: read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and "(Z)" not in _state_of(pid)}


def _state_of(pid: int) -> str:
    try:
        return "(" + Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] + ")"
    except OSError:
        return "(Z)"


# The worker is the same Python in every Blender's run (.venv's, with Ray): its real cluster jobs run
# once, in Blender 5.0's run; the stand-in batch above checks the Blender side in each.
real_cluster = pytest.mark.skipif(
    bpy.app.version[:2] != (5, 0) and not os.environ.get("UNSAMPLE_TEST_REAL_CLUSTER"),
    reason="real cluster jobs run in Blender 5.0's run (UNSAMPLE_TEST_REAL_CLUSTER=1 runs them here)",
)


@real_cluster
def test_a_batch_on_this_machines_gpus_restyles_every_strip_on_one_worker(image_strip, started, tmp_path):
    scene = bpy.context.scene
    use_cluster("LOCAL")
    more = second_strip(tmp_path)
    before = snapshot(scene)
    RUNNER.enqueue(scene, [image_strip, more])
    batch_progress = []

    def watch():
        state = bpy.context.window_manager.unsample
        if state.cluster_strips:
            batch_progress.append((state.cluster_strips, state.strip_count, state.progress))

    run_interactively(scene, watch)
    assert [o.ok for o in RUNNER.outcomes] == [True, True], [o.message for o in RUNNER.outcomes]
    [worker] = started
    assert len(job_files(worker.args)) == 2 and "--cluster" in worker.args
    last = RUNNER.added[-1]
    for source in (image_strip, more):
        check_styled(scene, source, before, active=last == f"{source.name} (Unsample)")
    assert batch_progress and {(count, total) for count, total, _ in batch_progress} == {(2, 2)}
    fractions = [fraction for _, _, fraction in batch_progress]
    assert fractions == sorted(fractions), "the batch's progress only moves forward"


@real_cluster
def test_cancel_mid_batch_stops_the_one_worker_and_its_cluster_and_adds_no_half_strip(image_strip, started, tmp_path):
    if not Path("/proc/self/stat").exists():
        pytest.skip("reads the process tree from /proc")
    scene = bpy.context.scene
    use_cluster("LOCAL")
    more = second_strip(tmp_path)
    before = snapshot(scene)
    RUNNER.enqueue(scene, [image_strip, more])
    state = bpy.context.window_manager.unsample
    below = set()

    def cancel_once_sampling():
        if started and not RUNNER.cancelled:
            below.update(descendants(started[0].process.pid))  # Ray's processes, as they start
            if state.stage.startswith(("Unsampling", "Restyling")):
                RUNNER.cancel()

    run_interactively(scene, cancel_once_sampling)
    assert state.status == "CANCELLED" and RUNNER.cancelled
    assert [o.ok for o in RUNNER.outcomes] == [False, False]
    assert snapshot(scene) == before and not styled_strips(scene), "no half strip"
    [worker] = started
    assert worker.process.poll() is not None
    assert {job.ref.name for job in RUNNER.resumable} == {"Shots", "More"}
    assert below, "the local Ray ran below the worker"
    deadline = time.monotonic() + 30
    while alive(below) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(below), "every process of the worker's cluster has stopped"
    for job in RUNNER.resumable:
        out = list((job.run_dir / "out").glob("*.png")) if (job.run_dir / "out").is_dir() else []
        assert all(not p.name.startswith(".") for p in out), "no half-written frame left under a frame's name"
