"""What the panel and the preferences both show of the worker's set-up and the cluster: Set Up
Worker's progress and why it is grey, the Cluster preference's state; and the wrapped labels they
are drawn with."""

from __future__ import annotations

import textwrap

import bpy

from .. import prefs as looked_up
from ..operators.setup_worker import setup_problem
from ..prefs import cluster_token_file, preferences, worker_python
from ..worker import cluster


def format_eta(seconds: float) -> str:
    if seconds < 0:
        return "estimating…"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d} left" if hours else f"{minutes}:{secs:02d} left"


def wrapped(layout: bpy.types.UILayout, text: str, width: int, icon: str = "NONE") -> None:
    # Labels do not wrap: split by the sidebar's width (about 7 pixels a character).
    lines = textwrap.wrap(text, max(20, width // 7)) or [""]
    column = layout.column(align=True)
    column.scale_y = 0.8 if len(lines) > 1 else 1.0
    for i, line in enumerate(lines):
        column.label(text=line, icon=icon if i == 0 else "BLANK1")


def draw_setup_gate(layout: bpy.types.UILayout, context: bpy.types.Context, width: int, downloads: bool) -> None:
    """Why Set Up Worker is grey, and the setting that turns it on, where Blender lets it be turned on
    here: Allow Online Access (Blender's own checkbox, and the way to its place in the preferences)
    and, with ``downloads``, Download Missing Models."""
    if context.window_manager.unsample.setup.status == "RUNNING":
        return  # grey because it runs: its progress is drawn instead
    problem = setup_problem()
    if not problem:
        return
    prefs = preferences()
    if not looked_up.online_access():  # looked up at call time: tests stand in for it
        if bpy.app.online_access_override:  # --offline-mode: Blender keeps it off until started without
            text = "Set Up Worker is grey: Blender was started offline (--offline-mode). Start it without that."
            wrapped(layout, text, width, "INFO")
            return
        text = "Set Up Worker is grey: it downloads packages, and Blender's Allow Online Access is off."
        wrapped(layout, f"{text} Turn it on here or in Preferences > System > Network.", width, "INFO")
        row = layout.row(align=True)
        row.prop(bpy.context.preferences.system, "use_online_access", text="Allow Online Access")
        # Its place in Blender's preferences; a globe, apart from the add-on's own gear.
        row.operator("screen.userpref_show", text="", icon="INTERNET").section = "SYSTEM"
    elif prefs is not None and not prefs.allow_downloads:
        text = "Set Up Worker is grey: Download Missing Models is off in Unsample's preferences."
        wrapped(layout, text, width, "INFO")
        if downloads:
            layout.prop(prefs, "allow_downloads")
    else:
        wrapped(layout, f"Set Up Worker is grey: {problem.rstrip('.')}.", width, "INFO")


def draw_setup_state(layout: bpy.types.UILayout, context: bpy.types.Context, width: int) -> None:
    """Set Up Worker's progress bar, ETA and Cancel while it runs; how it ended when it failed."""
    state = context.window_manager.unsample.setup
    if state.status == "RUNNING":
        layout.label(text="Setting up the worker", icon="CONSOLE")
        layout.progress(factor=state.progress, type="BAR", text=f"{state.progress:.0%}  {state.stage}")
        row = layout.row()
        row.label(text=format_eta(state.eta), icon="TIME")
        row.operator("sequencer.unsample_setup_cancel", text="Cancel", icon="CANCEL")
    elif state.status != "IDLE":
        icon = {"FINISHED": "CHECKMARK", "FAILED": "ERROR", "CANCELLED": "CANCEL"}[state.status]
        wrapped(layout, state.message, width, icon)


def draw_cluster_state(layout: bpy.types.UILayout, context: bpy.types.Context, width: int) -> None:
    """With Cluster on: what is wrong with the setting, or the last Check Cluster's answer, and the button."""
    prefs = preferences()
    if prefs is None or prefs.cluster == "NONE":
        return
    problem = cluster.cluster_problem(prefs.cluster, prefs.cluster_address, cluster_token_file())
    if problem:
        wrapped(layout, problem, width, "ERROR")
        return
    choice = cluster.cluster_choice(prefs, cluster_token_file())
    report = cluster.cluster_report(worker_python(), choice)
    name = cluster.display_name(choice.target)
    if report is None:
        text, icon = f"Cluster: {name}, not checked yet", "NETWORK_DRIVE"
    elif report.get("checking"):
        text, icon = f"Checking the cluster ({name})…", "TIME"
    elif report.get("ok"):
        # No GPUs: it works, on CPUs, slowly: said, not ticked.
        text, icon = f"Cluster: {cluster.describe(report)}", "CHECKMARK" if report.get("gpus") else "INFO"
    else:
        text, icon = f"Cluster: {cluster.describe(report)}", "ERROR"  # the message names the address
    column = layout.column()
    wrapped(column, text, width - 50, icon)
    column.operator("sequencer.unsample_check_cluster", icon="FILE_REFRESH")
