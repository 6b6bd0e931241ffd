"""The cluster's door in real Blender: the token file and the opt-in for a cluster without a token reach
the worker (as a path and a flag, never the token), a token file that is not there greys Restyle, and
Check Cluster against heads started as users start them (tests/ray_heads.py) says what the engine says.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy
import pytest
from conftest import poll_message, worker_python
from test_cluster import job_files, started, use_cluster  # noqa: F401 - started is a fixture
from test_prompts import draw, draw_preferences, labels

from blender_unsample.addon.operators import SEQUENCER_OT_unsample_check_cluster, SEQUENCER_OT_unsample_restyle
from blender_unsample.addon.ui import panel
from blender_unsample.addon.worker import cluster

TOKEN = "c0de" * 16
ALLOW = "--cluster-allow-unauthenticated"

real_cluster = pytest.mark.skipif(
    bpy.app.version[:2] != (5, 0) and not os.environ.get("UNSAMPLE_TEST_REAL_CLUSTER"),
    reason="real Ray heads run in Blender 5.0's run (UNSAMPLE_TEST_REAL_CLUSTER=1 runs them here)",
)


def prefs():
    return bpy.context.preferences.addons["blender_unsample"].preferences


def join_with(token_file: str = "", allow_unauthenticated: bool = False) -> None:
    prefs().cluster_token_file, prefs().cluster_allow_unauthenticated = token_file, allow_unauthenticated


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "auth_token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("setting", "allow", "expected"),
    [
        ("ADDRESS", False, ["--cluster", "head-node:6379", "--cluster-token-file", "{token}"]),
        ("ADDRESS", True, ["--cluster", "head-node:6379", "--cluster-token-file", "{token}", ALLOW]),
        ("LOCAL", True, ["--cluster", "auto"]),  # the Ray we start makes its own token
    ],
    ids=["token-file", "token-file-and-open-clusters", "this-machine"],
)
def test_the_worker_gets_the_token_file_as_a_path_and_the_opt_in_as_a_flag(
    image_strip,
    quick_worker,
    started,  # noqa: F811 - the fixture imported above
    token_file,
    setting,
    allow,
    expected,
):
    use_cluster(setting, "head-node:6379")
    join_with(str(token_file), allow)
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    [worker] = started
    [job] = job_files(worker.args)
    flags = [argument.format(token=token_file) for argument in expected]
    assert worker.args == ["restyle", "--job", str(job), *flags, "--progress", "json", "--stdin-control"]
    assert TOKEN not in job.read_text(encoding="utf-8") and TOKEN not in " ".join(worker.args)


def test_a_token_file_relative_to_the_blend_file_reaches_the_worker_as_a_whole_path(
    image_strip,
    quick_worker,
    started,  # noqa: F811 - the fixture imported above
    token_file,
    tmp_path,
):
    """Blender's file browser writes paths relative to a saved .blend ("//auth_token") by default."""
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "edit.blend"))
    use_cluster("ADDRESS", "head-node:6379")
    join_with("//auth_token")
    assert poll_message(SEQUENCER_OT_unsample_restyle, bpy.context)[0], "the file is there: Restyle is not grey"
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    [worker] = started
    assert worker.args[worker.args.index("--cluster-token-file") + 1] == str(token_file)


def test_the_token_is_not_kept_in_the_blend_file(addon, token_file, tmp_path):
    use_cluster("ADDRESS", "head-node:6379")
    join_with(str(token_file))
    saved = tmp_path / "edit.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(saved), copy=True)
    assert TOKEN.encode() not in saved.read_bytes()


def test_a_token_file_that_is_not_there_greys_restyle_and_check_cluster_with_the_reason(image_strip, tmp_path):
    use_cluster("ADDRESS", "head-node:6379")
    join_with(str(tmp_path / "no-such-token"))
    ok, message = poll_message(SEQUENCER_OT_unsample_restyle, bpy.context)
    assert not ok and f"The Cluster Token File {tmp_path / 'no-such-token'} is not a file" in message
    assert poll_message(SEQUENCER_OT_unsample_check_cluster, bpy.context) == (False, message)
    assert "is not a file" in labels(draw(panel.SEQUENCER_PT_unsample, bpy.context.scene))


def test_the_preferences_warn_beside_the_opt_in(addon):
    use_cluster("ADDRESS", "head-node:6379")
    for allow in (False, True):
        join_with("", allow)
        drawn = draw_preferences(addon)
        warned = "runs code from anyone who reaches it" in labels(drawn)
        assert warned == allow
    name = type(addon).__annotations__["cluster_allow_unauthenticated"].keywords["description"]
    assert "Anyone who can reach such a cluster can run code on its machines" in name


# --- Check Cluster against real heads --------------------------------------------------------------------


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Two heads for the module: one that asks for TOKEN, one started without authentication."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.ray_heads import start_head

    secured = start_head(worker_python(), tmp_path_factory.mktemp("secured"), TOKEN)
    try:
        open_head = start_head(worker_python(), tmp_path_factory.mktemp("open"), None)
    except BaseException:
        secured.stop()
        raise
    yield secured, open_head
    secured.stop()
    open_head.stop()


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    """The worker's HOME without Ray's token file, and no token in its environment. The heads listen on
    loopback only, so the worker joins them as a node on loopback too (Ray's one-machine switch, the
    user's own setting, which the engine keeps when it joins a cluster)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def check(expect_ok: bool) -> tuple[str, str]:
    """Check Cluster as a script runs it: its report (the error, when it fails), and what the Models
    panel then says (wrapped to the sidebar, so a long path may break across lines)."""
    if expect_ok:
        assert bpy.ops.sequencer.unsample_check_cluster() == {"FINISHED"}
        said = ""
    else:
        with pytest.raises(RuntimeError) as error:
            bpy.ops.sequencer.unsample_check_cluster()
        said = str(error.value)
    return said, labels(draw(panel.SEQUENCER_PT_unsample_models, bpy.context.scene)).replace("  ", " ")


@real_cluster
def test_check_cluster_joins_a_cluster_with_its_token_file_and_says_why_not_without(
    addon, heads, own_home, token_file, tmp_path
):
    secured, _ = heads
    use_cluster("ADDRESS", secured.address)
    join_with("")
    said, shown = check(expect_ok=False)
    assert "asks for its token and none was found" in said and "none was found" in shown
    wrong = tmp_path / "wrong_token"
    wrong.write_text("f" * 64, encoding="utf-8")
    join_with(str(wrong))
    said, shown = check(expect_ok=False)
    assert f"refused the token from {wrong}" in said and "refused the token" in shown
    assert "f" * 64 not in said + shown
    join_with(str(token_file))
    assert "Cluster: 0 GPUs on 1 node: jobs run on its 1 CPU" in check(expect_ok=True)[1]


@real_cluster
def test_check_cluster_refuses_a_cluster_without_a_token_unless_allowed(addon, heads, own_home):
    _, open_head = heads
    use_cluster("ADDRESS", open_head.address)
    join_with("")
    said, shown = check(expect_ok=False)
    assert "asks for no token: anyone who can reach it can run code on its machines" in said
    assert "Allow Clusters Without a Token" in said and "asks for no token" in shown
    join_with("", allow_unauthenticated=True)
    assert "Cluster: 0 GPUs on 1 node" in check(expect_ok=True)[1]
    assert cluster.cluster_choice(prefs(), "").arguments()[-1] == ALLOW
