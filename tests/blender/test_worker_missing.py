"""A fresh install in real Blender: the worker Python lacks torch. Restyle, Preview and Resume are
grey with the reason until it can run, and the panel and the preferences say why Set Up Worker is
grey too and offer the setting that turns it on."""

from __future__ import annotations

import subprocess
import sys
import time

import bpy
import pytest
from conftest import poll_message
from test_prompts import draw, draw_preferences, labels, props

from blender_unsample.addon import prefs as looked_up
from blender_unsample.addon.jobs.runner import RUNNER
from blender_unsample.addon.operators import (
    SEQUENCER_OT_unsample_preview,
    SEQUENCER_OT_unsample_restyle,
    SEQUENCER_OT_unsample_resume,
)
from blender_unsample.addon.ui import panel
from blender_unsample.addon.worker.process import forget_worker_reports, settled_worker_report, worker_report

BATCH_OPERATORS = (SEQUENCER_OT_unsample_restyle, SEQUENCER_OT_unsample_preview, SEQUENCER_OT_unsample_resume)


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> str:
    """A Python with none of the worker's packages, as a fresh install's worker Python is: a virtual
    environment of this Python without its site-packages."""
    env = tmp_path_factory.mktemp("bare") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    return str(env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python"))


def wait_for_report(python: str) -> dict:
    deadline = time.monotonic() + 120
    while (report := settled_worker_report(python)) is None:  # as the buttons see it
        assert time.monotonic() < deadline, "no doctor report within 2 minutes"
        time.sleep(0.1)
    return report


@pytest.fixture
def fresh_install(image_strip, bare_python, monkeypatch):
    """The add-on on a worker Python without torch, Blender offline, Set Up Worker idle."""
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    prefs.worker_python = bare_python
    prefs.package_index, prefs.allow_downloads = "", True
    monkeypatch.setattr(looked_up, "online_access", lambda: False)
    bpy.context.window_manager.unsample.setup.status = "IDLE"
    assert "torch" in wait_for_report(bare_python)["missing"]
    return prefs


def test_without_torch_restyle_preview_and_resume_are_grey_naming_the_package_and_set_up_worker(
    fresh_install, monkeypatch
):
    monkeypatch.setattr(RUNNER, "resumable", [object()])  # a failed strip to resume
    for operator in BATCH_OPERATORS:
        ok, message = poll_message(operator, bpy.context)
        assert not ok, f"{operator.bl_idname} is usable although its job can only fail"
        assert "lacks torch" in message and "Set Up Worker" in message, message
        assert "Allow Online Access" in message, "why Set Up Worker itself is grey, too"


def test_while_the_worker_python_is_still_being_asked_restyle_stays_usable(fresh_install):
    forget_worker_reports()
    assert poll_message(SEQUENCER_OT_unsample_restyle, bpy.context) == (True, "")  # the first ask: None
    wait_for_report(fresh_install.worker_python)
    assert not poll_message(SEQUENCER_OT_unsample_restyle, bpy.context)[0]


def test_a_script_is_refused_with_the_reason_and_no_job_starts(fresh_install, monkeypatch):
    enqueued = []
    monkeypatch.setattr(RUNNER, "enqueue", lambda *args, **kwargs: enqueued.append(args))
    with pytest.raises(RuntimeError, match=r"poll\(\).*lacks torch.*Set Up Worker"):
        bpy.ops.sequencer.unsample_restyle()  # greyed: refused by poll
    # The report came in between poll and execute: execute refuses on its own.
    monkeypatch.setattr(SEQUENCER_OT_unsample_restyle, "poll", classmethod(lambda cls, context: True))
    with pytest.raises(RuntimeError, match=r"lacks torch.*Set Up Worker") as refused:
        bpy.ops.sequencer.unsample_restyle()
    assert "poll()" not in str(refused.value), "refused by execute itself"
    assert enqueued == [] and not RUNNER.busy


def test_the_panel_says_set_up_worker_needs_online_access_and_offers_it(fresh_install):
    drawn = draw(panel.SEQUENCER_PT_unsample, bpy.context.scene)
    text = labels(drawn).replace("  ", " ")
    assert "lacks torch" in text
    assert "Set Up Worker is grey" in text and "Allow Online Access is off" in text
    assert "Preferences > System > Network" in text
    assert ("use_online_access", None, True) in props(drawn), "the checkbox itself, as Blender draws it"
    operators = [b["operator"] for f, b, _ in drawn if f == "operator"]
    assert "screen.userpref_show" in operators, "and the way to the System preferences"


def test_the_panel_names_download_missing_models_when_that_is_what_is_off(fresh_install, monkeypatch):
    monkeypatch.setattr(looked_up, "online_access", lambda: True)
    fresh_install.allow_downloads = False
    drawn = draw(panel.SEQUENCER_PT_unsample, bpy.context.scene)
    assert "Set Up Worker is grey: Download Missing Models is off" in labels(drawn).replace("  ", " ")
    assert ("allow_downloads", None, True) in props(drawn)
    assert "use_online_access" not in [name for name, _, _ in props(drawn)]


def test_with_a_local_package_index_nothing_needs_turning_on(fresh_install, tmp_path):
    (tmp_path / "wheels").mkdir()
    fresh_install.package_index = str(tmp_path / "wheels")
    drawn = draw(panel.SEQUENCER_PT_unsample, bpy.context.scene)
    assert "lacks torch" in labels(drawn).replace("  ", " ")
    assert "Set Up Worker is grey" not in labels(drawn).replace("  ", " ")
    assert "use_online_access" not in [name for name, _, _ in props(drawn)]


def test_the_preferences_say_why_set_up_worker_is_grey(fresh_install):
    drawn = draw_preferences(fresh_install)
    text = labels(drawn).replace("  ", " ")
    assert "Set Up Worker is grey" in text and "Allow Online Access is off" in text
    assert "use_online_access" in [name for name, _, _ in props(drawn)]


def test_packages_installed_by_hand_are_noticed_without_restarting(image_strip, tmp_path, monkeypatch):
    from blender_unsample.addon.worker import process

    def doctor_saying(missing: list[str]) -> None:
        report = {"python": "x", "packages": {"torch": "2.13.0"}, "missing": missing, "devices": ["cpu"]}
        script.write_text(f"#!{sys.executable}\nimport json\nprint(json.dumps({report!r}))\n", encoding="utf-8")

    script = tmp_path / "own-env-python"
    doctor_saying(["torch"])
    script.chmod(0o755)
    prefs = bpy.context.preferences.addons["blender_unsample"].preferences
    prefs.worker_python = str(script)
    assert wait_for_report(str(script))["missing"] == ["torch"]
    assert not poll_message(SEQUENCER_OT_unsample_restyle, bpy.context)[0]
    doctor_saying([])  # the user ran `pip install torch` in that environment
    monkeypatch.setattr(process, "RECHECK_SECONDS", 0.0)
    deadline = time.monotonic() + 60
    while worker_report(str(script))["missing"]:
        assert time.monotonic() < deadline, "the missing packages were never asked about again"
        time.sleep(0.1)
    assert poll_message(SEQUENCER_OT_unsample_restyle, bpy.context) == (True, "")
