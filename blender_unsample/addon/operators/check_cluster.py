"""Check Cluster: ask the worker whether the Cluster preference's Ray cluster answers, and with how many GPUs.

Interactively the check runs on a thread and the panel and preferences show its answer when it comes
(a local Ray takes a few seconds to start); from scripts and in background mode ``execute`` waits for it.
"""

from __future__ import annotations

import bpy

from .. import prefs as looked_up
from ..worker import cluster


def current_choice() -> tuple[cluster.ClusterChoice | None, str | None]:
    """The cluster the preferences name, or None and why it cannot be checked."""
    prefs = looked_up.preferences()
    if prefs is None or prefs.cluster == "NONE":
        return None, "Cluster is None in Unsample's preferences: jobs run on the worker alone"
    token_file = looked_up.cluster_token_file()
    problem = cluster.cluster_problem(prefs.cluster, prefs.cluster_address, token_file)
    if problem:
        return None, problem
    return cluster.cluster_choice(prefs, token_file), None


def _redraw_when_checked() -> float | None:
    """A timer while a check runs: the panel and the preferences show the answer once it is in."""
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in {"SEQUENCE_EDITOR", "PREFERENCES"}:
                area.tag_redraw()
    return 0.5 if cluster.checking() else None


class SEQUENCER_OT_unsample_check_cluster(bpy.types.Operator):
    """Ask the worker whether the Ray cluster of the Cluster preference answers, and how many GPUs and nodes it
    has (This Machine's GPUs starts a local Ray for a few seconds)"""

    bl_idname = "sequencer.unsample_check_cluster"
    bl_label = "Check Cluster"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        choice, problem = current_choice()
        if problem:
            cls.poll_message_set(problem)
            return False
        report = cluster.cluster_report(looked_up.worker_python(), choice)
        if report and report.get("checking"):
            cls.poll_message_set("The cluster is being checked")
            return False
        return True

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        choice, _ = current_choice()
        cluster.check_cluster(looked_up.worker_python(), choice)
        if not bpy.app.timers.is_registered(_redraw_when_checked):
            bpy.app.timers.register(_redraw_when_checked, first_interval=0.5)
        self.report({"INFO"}, f"Checking the cluster ({cluster.display_name(choice.target)})")
        return {"FINISHED"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        choice, _ = current_choice()
        python = looked_up.worker_python()
        cluster.check_cluster(python, choice).join()
        report = cluster.cluster_report(python, choice) or {}
        if not report.get("ok"):
            self.report({"ERROR"}, f"Cluster: {cluster.describe(report)}")  # the message names the address
            return {"CANCELLED"}
        self.report({"INFO"}, f"Cluster {cluster.display_name(choice.target)}: {cluster.describe(report)}")
        return {"FINISHED"}


def unregister_timer() -> None:
    if bpy.app.timers.is_registered(_redraw_when_checked):
        bpy.app.timers.unregister(_redraw_when_checked)  # it would call into a disabled add-on
