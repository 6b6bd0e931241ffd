"""Set Up Worker: a worker environment made with uv, offline, from a local wheelhouse as the Package
Index (the same code path as a remote index), then used by a restyle; its failures, cancel and gate.

The wheelhouse is downloaded once (torch from this machine's disk through pip's find-links, the rest
from PyPI) into build/test-wheelhouse/, keyed by the requirements, and reused from then on.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import bpy
import pytest
from conftest import ROOT, poll_message, styled_strips, worker_python

from blender_unsample.addon import prefs as looked_up
from blender_unsample.addon.operators import SEQUENCER_OT_unsample_setup_cancel, SEQUENCER_OT_unsample_setup_worker
from blender_unsample.addon.operators import setup_worker as setup_operator
from blender_unsample.addon.worker import environment
from blender_unsample.addon.worker.environment import (
    UV_VERSION,
    InstallProgress,
    failure_reason,
    index_arguments,
    plan,
    setup_problem,
)

REQUIREMENTS = ROOT / "blender_unsample" / "engine" / "requirements.txt"


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + f"\nuv=={UV_VERSION}".encode()).hexdigest()[:12]
    folder = ROOT / "build" / "test-wheelhouse" / key
    if not folder.is_dir():
        partial = folder.with_name(f"{key}.partial-{os.getpid()}")
        command = [worker_python(), "-m", "pip", "download", "-q", "-d", str(partial), "-r", str(REQUIREMENTS)]
        subprocess.run([*command, f"uv=={UV_VERSION}"], check=True)
        partial.rename(folder)  # whole or not at all: a cut-short download is never taken for a wheelhouse
    return folder


def needs_torch_wheel(wheelhouse: Path) -> None:
    """The environment is made from this Python: skip where the wheelhouse has no torch for it."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if not any(wheelhouse.glob(f"torch-*-{tag}-*.whl")):
        pytest.skip(f"no torch wheel for {tag} in the wheelhouse")


@pytest.fixture
def setup_prefs(addon, wheelhouse):
    """The add-on with the wheelhouse as its Package Index; the env goes under the test's cache root."""
    addon.package_index = wheelhouse.as_uri()
    bpy.context.window_manager.unsample.setup.status = "IDLE"
    yield addon
    environment.cancel_running()


def env_python(prefs, slot: str = "worker-env") -> Path:
    return environment.env_python(Path(prefs.cache_folder) / slot)


def group_alive(group: int, grace: float = 5.0) -> bool:
    """Whether any process of the group is left after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def wait_for_report(python: str) -> dict:
    """The panel's check of a worker Python, asked in the background as the panel asks it."""
    from blender_unsample.addon.worker.process import worker_report

    deadline = time.monotonic() + 120
    while (report := worker_report(python)) is None:
        assert time.monotonic() < deadline, "no doctor report within 2 minutes"
        time.sleep(0.2)
    return report


# --- in real Blender, against the wheelhouse ---------------------------------------------------------


def test_set_up_worker_makes_an_environment_that_the_panel_accepts_and_that_restyles(
    image_strip, setup_prefs, wheelhouse
):
    needs_torch_wheel(wheelhouse)
    assert bpy.ops.sequencer.unsample_setup_worker() == {"FINISHED"}

    python = env_python(setup_prefs)
    assert Path(setup_prefs.worker_python) == python
    state = bpy.context.window_manager.unsample.setup
    assert state.status == "FINISHED" and state.progress == 1.0
    assert "torch 2.13.0" in state.message and "cpu" in state.message
    root = Path(setup_prefs.cache_folder)  # a checkout's add-on: the runner's cache root
    assert (root / "uv-cache").is_dir(), "uv's cache lives next to the environment, for a retry"
    assert "Installed" in (root / "worker-env.log").read_text(encoding="utf-8")

    report = wait_for_report(setup_prefs.worker_python)  # the panel's worker check: green
    assert report["missing"] == [] and report["packages"]["torch"].startswith("2.13.0")
    assert Path(report["python"]).parent == python.parent

    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    assert len(styled_strips(bpy.context.scene)) == 1


def test_a_failed_install_keeps_worker_python_and_a_retry_succeeds(setup_prefs, wheelhouse, tmp_path):
    old = str(tmp_path / "old-env" / "bin" / "python")
    setup_prefs.worker_python = old
    no_torch = tmp_path / "no-torch"
    no_torch.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("torch-"):
            (no_torch / wheel.name).symlink_to(wheel)
    setup_prefs.package_index = no_torch.as_uri()

    with pytest.raises(RuntimeError, match=r"torch is not available from file://.*no-torch"):
        bpy.ops.sequencer.unsample_setup_worker()
    state = bpy.context.window_manager.unsample.setup
    log = Path(setup_prefs.cache_folder) / "worker-env.log"
    assert state.status == "FAILED" and state.message.endswith(f"Log: {log}")
    assert "\n" not in state.message
    assert setup_prefs.worker_python == old, "a failed set-up must not touch Worker Python"
    assert "was not found" in log.read_text(encoding="utf-8")

    needs_torch_wheel(wheelhouse)
    setup_prefs.package_index = wheelhouse.as_uri()
    assert bpy.ops.sequencer.unsample_setup_worker() == {"FINISHED"}
    assert Path(setup_prefs.worker_python) == env_python(setup_prefs)
    assert state.status == "FINISHED"


def site_packages(python: str) -> list[str]:
    """What is installed in the environment of ``python``, as its site-packages folder lists it."""
    where = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return sorted(os.listdir(where))


def test_refreshes_that_fail_leave_the_working_environment_as_it_was(setup_prefs, wheelhouse):
    needs_torch_wheel(wheelhouse)
    assert bpy.ops.sequencer.unsample_setup_worker() == {"FINISHED"}
    working = setup_prefs.worker_python
    installed = site_packages(working)

    # Cluster turned on, Set Up Worker pressed to add Ray: the index has no Ray, so each refresh fails.
    setup_prefs.cluster = "LOCAL"
    for attempt in (1, 2):
        with pytest.raises(RuntimeError, match=r"no version of ray\[client\]==2\.60\.0.* Log: "):
            bpy.ops.sequencer.unsample_setup_worker()
        assert setup_prefs.worker_python == working, f"failed refresh {attempt} changed Worker Python"
        # The listing is asked of Worker Python itself: it still starts, and nothing in it moved.
        assert site_packages(working) == installed, f"failed refresh {attempt} changed the working environment"
    # And it still imports them: 11 s here, so once, after the second failure (the one that used to empty it).
    imports = subprocess.run([working, "-c", "import torch, diffusers"], capture_output=True, text=True)
    assert imports.returncode == 0, f"after two failed refreshes Worker Python lost torch: {imports.stderr}"

    setup_prefs.cluster = "NONE"
    assert bpy.ops.sequencer.unsample_setup_worker() == {"FINISHED"}
    assert Path(setup_prefs.worker_python) == env_python(setup_prefs, "worker-env-2"), "built beside the old one"
    report = environment.latest().report  # the set-up's own doctor, in the environment now in use
    assert report["missing"] == [] and report["packages"]["torch"].startswith("2.13.0")
    assert site_packages(working) == installed, "the old environment is kept: a job may still run from it"


def test_cancel_kills_the_install_and_keeps_worker_python(setup_prefs, tmp_path):
    context = bpy.context
    assert poll_message(SEQUENCER_OT_unsample_setup_cancel, context) == (False, "The worker is not being set up")
    old = setup_prefs.worker_python
    root = setup_operator.setup_root()
    job = environment.start(sys.executable, root, setup_operator.package_index(), worker_python=old)
    deadline = time.monotonic() + 60
    while not (job.step.kind == "install" and job.process is not None and job.process.poll() is None):
        assert not job.done and time.monotonic() < deadline, job.message
        time.sleep(0.02)
    uv = job.process
    assert poll_message(SEQUENCER_OT_unsample_setup_worker, context) == (False, "The worker is being set up")

    assert bpy.ops.sequencer.unsample_setup_cancel() == {"FINISHED"}
    job.wait(30)
    assert job.outcome == "cancelled" and uv.poll() is not None
    assert not group_alive(uv.pid), "nothing uv started lives on either"
    setup_operator.show(context, job)
    state = context.window_manager.unsample.setup
    assert state.status == "CANCELLED" and "press it again to resume" in state.message
    assert setup_prefs.worker_python == old
    # Pressing it again starts the cut-short environment over in the same place, from uv's cache.
    venv = plan(sys.executable, root, setup_prefs.package_index, worker_python=old)[0].command
    assert venv[-2:] == ["--clear", str(job.env)]


def test_disabling_the_add_on_stops_a_running_set_up(setup_prefs):
    import addon_utils

    root, index = setup_operator.setup_root(), setup_operator.package_index()
    job = environment.start(sys.executable, root, index, worker_python=setup_prefs.worker_python)
    deadline = time.monotonic() + 30
    while job.process is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    addon_utils.disable("blender_unsample", default_set=True)
    try:
        assert job.outcome == "cancelled" and job.process.poll() is not None
    finally:
        addon_utils.enable("blender_unsample", default_set=True, handle_error=None)


@pytest.mark.parametrize(
    ("index", "online", "downloads", "reason"),
    [
        ("https://mirror.example.com/simple", False, True, "Allow Online Access is off"),
        ("", False, True, "Allow Online Access is off"),
        ("https://mirror.example.com/simple", True, False, "Downloads are off"),
        ("https://mirror.example.com/simple", True, True, None),
        ("{tmp}", False, False, None),  # a folder on this machine needs no network
        ("file://{tmp}", False, False, None),
    ],
)
def test_the_button_is_grey_with_the_reason_unless_online_or_local(
    addon, monkeypatch, tmp_path, index, online, downloads, reason
):
    monkeypatch.setattr(looked_up, "online_access", lambda: online)
    addon.package_index = index.format(tmp=tmp_path)
    addon.allow_downloads = downloads
    ok, message = poll_message(SEQUENCER_OT_unsample_setup_worker, bpy.context)
    if reason:
        assert not ok and reason in message
    else:
        assert ok and message == ""


@pytest.fixture
def no_torch_report(monkeypatch):
    from blender_unsample.addon.ui import panel

    report = {"missing": ["torch", "diffusers", "transformers"]}
    monkeypatch.setattr(panel, "_worker_state", lambda: report)


def drawn_operators(drawn: list) -> list[str]:
    return [bound["operator"] for function, bound, _ in drawn if function == "operator"]


def test_the_panel_offers_set_up_worker_then_shows_its_progress_then_why_it_failed(image_strip, no_torch_report):
    from test_prompts import draw, labels

    from blender_unsample.addon.ui.panel import SEQUENCER_PT_unsample

    scene, state = bpy.context.scene, bpy.context.window_manager.unsample.setup
    drawn = draw(SEQUENCER_PT_unsample, scene)  # Layout checks every call against this Blender's UILayout
    assert "sequencer.unsample_setup_worker" in drawn_operators(drawn)
    assert "lacks torch, diffusers and 1 more packages" in labels(drawn).replace("  ", " ")

    state.status, state.progress, state.stage, state.eta = "RUNNING", 0.4, "Downloading 1/3 files, 17 of 2,298 MB", 75
    drawn = draw(SEQUENCER_PT_unsample, scene)
    [bar] = [bound for function, bound, _ in drawn if function == "progress"]
    assert bar["factor"] == pytest.approx(0.4) and bar["text"] == "40%  Downloading 1/3 files, 17 of 2,298 MB"
    assert "1:15 left" in labels(drawn)
    assert "sequencer.unsample_setup_cancel" in drawn_operators(drawn)
    assert "sequencer.unsample_setup_worker" not in drawn_operators(drawn)

    state.status, state.message = "FAILED", "Set Up Worker failed (installing packages): the disk is full. Log: /x"
    drawn = draw(SEQUENCER_PT_unsample, scene)
    assert "the disk is full" in labels(drawn) and "sequencer.unsample_setup_worker" in drawn_operators(drawn)


def test_the_preferences_have_set_up_worker_next_to_worker_python_and_the_package_index(addon):
    from test_prompts import draw_preferences

    drawn = draw_preferences(addon)
    names = [bound.get("property") or bound.get("operator") for _, bound, _ in drawn]
    assert names.index("sequencer.unsample_setup_worker") == names.index("worker_python") + 1
    assert "package_index" in names


# --- the pure parts ------------------------------------------------------------------------------


def test_the_plan_uses_uv_with_pytorchs_index_only_without_a_package_index(tmp_path):
    steps = plan("/blender/python", tmp_path, "")
    assert [s.kind for s in steps] == ["venv", "uv", "install", "check"]
    assert steps[0].command == ["/blender/python", "-m", "venv", "--clear", str(tmp_path / "worker-env")]
    assert steps[1].command[-1] == f"uv=={UV_VERSION}"
    install = steps[2].command
    assert install[:3] == [str(environment.env_uv(tmp_path / "worker-env")), "pip", "install"]
    assert "--torch-backend=auto" in install and "--index-url" not in install
    assert install[install.index("--cache-dir") + 1] == str(tmp_path / "uv-cache")
    assert install[-2:] == ["-r", str(REQUIREMENTS)]
    assert abs(sum(s.share for s in steps) - 1.0) < 1e-9

    mirror = plan("/blender/python", tmp_path, "https://mirror.example.com/simple")
    assert "--torch-backend=auto" not in mirror[2].command
    assert mirror[1].command[-3:-1] == mirror[2].command[-4:-2] == ["--index-url", "https://mirror.example.com/simple"]


def test_a_folder_index_is_a_wheelhouse_when_it_holds_wheels_else_a_simple_index(tmp_path):
    (tmp_path / "house").mkdir()
    (tmp_path / "house" / "uv-1-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "simple").mkdir()
    assert index_arguments((tmp_path / "house").as_uri()) == ["--no-index", "--find-links", str(tmp_path / "house")]
    assert index_arguments(str(tmp_path / "house")) == ["--no-index", "--find-links", str(tmp_path / "house")]
    assert index_arguments(str(tmp_path / "simple")) == ["--index-url", (tmp_path / "simple").as_uri()]
    assert index_arguments("") == []


@pytest.mark.parametrize(
    ("worker_python", "built"),
    [
        ("", "worker-env"),  # Blender's own Python
        ("/usr/bin/python3", "worker-env"),
        ("{root}/worker-env/bin/python", "worker-env-2"),
        ("{root}/worker-env/bin/python3.11", "worker-env-2"),
        ("{link}/worker-env/bin/python", "worker-env-2"),  # the same folder through a link
        ("{root}/worker-env-2/bin/python", "worker-env"),
        ("{root}/worker-env-3/bin/python", "worker-env"),
        ("{comfy}/venv/bin/python", "worker-env"),  # a user's own environment, outside the folder
    ],
)
def test_a_set_up_builds_afresh_beside_the_environment_worker_python_points_into(tmp_path, worker_python, built):
    root, comfy = tmp_path / "unsample", tmp_path / "ComfyUI"
    (root / "worker-env" / "bin").mkdir(parents=True)  # a finished environment and a link to its folder
    (root / "worker-env" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "link").symlink_to(root)
    worker_python = worker_python.format(root=root, link=tmp_path / "link", comfy=comfy)

    steps = plan("/py", root, "", worker_python=worker_python)
    assert [s.kind for s in steps] == ["venv", "uv", "install", "check"]
    assert steps[0].command == ["/py", "-m", "venv", "--clear", str(root / built)]  # nothing points at it
    assert environment.SetupJob("/py", root, "", worker_python=worker_python).env == root / built
    assert not any(str(comfy) in word for step in steps for word in step.command)


def test_setup_problem_names_the_missing_permission():
    assert setup_problem("", online=True, downloads=True, running=True) == "The worker is being set up"
    assert "Allow Online Access" in setup_problem("", online=False, downloads=True, running=False)
    assert "Download Missing Models" in setup_problem("", online=True, downloads=False, running=False)
    assert setup_problem("/srv/wheels", online=False, downloads=False, running=False) is None


UV_OUTPUT = """Using Python 3.11.7 environment at: worker-env
Resolved 49 packages in 1.10s
Downloading torch (846.9MiB)
Downloading numpy (17.4MiB)
Downloading nvidia-cudnn-cu12 (1.4GiB)
 Downloaded numpy
 Downloaded torch
 Downloaded nvidia-cudnn-cu12
Prepared 49 packages in 95.2s
Installed 49 packages in 2.31s
 + torch==2.13.0
"""


def test_uv_output_becomes_progress_in_packages_and_megabytes():
    progress = InstallProgress()
    fractions, texts = [], []
    for second, line in enumerate(UV_OUTPUT.splitlines()):
        progress.feed(line, float(second))
        fractions.append(progress.fraction)
        texts.append(progress.text())
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert texts[1] == "Installing 49 packages"  # resolved; nothing announced yet
    assert texts[4] == "Downloading 0/3 files, 0 of 2,298 MB"
    assert texts[5] == "Downloading 1/3 files, 17 of 2,298 MB"
    assert texts[7] == "Downloading 3/3 files, 2,298 of 2,298 MB"
    assert texts[-1] == "Installed 49 packages"


def test_the_download_eta_follows_the_rate_seen_so_far():
    progress = InstallProgress()
    for line, second in (("Resolved 3 packages", 0), ("Downloading a (100MiB)", 0), ("Downloading b (300MiB)", 0)):
        progress.feed(line, second)
    assert progress.download_eta(5.0) is None  # nothing finished yet: no rate
    progress.feed("Downloaded a", 10.0)
    assert progress.download_eta(10.0) == pytest.approx(30.0)  # 300 MB at 10 MB/s


@pytest.mark.parametrize(
    ("output", "cause"),
    [
        (
            "error: No solution found when resolving dependencies\n  cause: Because torch was not found in the "
            "provided package locations and you require torch==2.13.0, we can conclude that ...",
            "torch is not available from file:///w for Python",
        ),
        (
            "  × No solution found when resolving dependencies:\n  ╰─▶ Because no-such-thing was not found in the "
            "package registry and you require no-such-thing==1.0, we can conclude ...",
            "no-such-thing is not available from file:///w",
        ),
        ("ERROR: No matching distribution found for uv==0.13.9", "uv is not available from file:///w"),
        (
            "error: Request failed after 3 retries\n  cause: error sending request\n  cause: dns error",
            "cannot reach file:///w (no network?)",
        ),
        ("WARNING: Retrying after NewConnectionError: Failed to establish a new connection", "cannot reach"),
        ("error: Failed to install: torch\n  cause: No space left on device (os error 28)", "the disk is full"),
        (
            "  ╰─▶ Because torch==2.13.0 has no wheels with a matching Python ABI tag (e.g., `cp314`)",
            "torch==2.13.0 has no build for Python",
        ),
        ("something odd\nerror: the last line says it", "the last line says it"),
    ],
)
def test_a_failure_is_one_sentence_naming_the_cause(output, cause):
    reason = failure_reason(output, "file:///w")
    assert cause in reason and "\n" not in reason
