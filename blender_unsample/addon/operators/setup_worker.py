"""Set Up Worker: a Python environment with torch and diffusers for the worker, then used as it.

Interactively the install runs under a modal operator woken by a timer, so Blender stays usable;
from scripts and in background mode ``execute`` blocks until it is over. The work itself
(:mod:`..worker.environment`) runs on a thread and in subprocesses; this module only starts it, moves its
state into ``window_manager.unsample.setup`` for the panel, and sets the preference at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import bpy

from .. import prefs as looked_up
from ..prefs import ADDON_ID
from ..worker import environment
from ..worker.cluster import forget_cluster_reports
from ..worker.process import forget_worker_reports

TIMER_INTERVAL = 0.2


def setup_root() -> Path:
    """The extension's user folder; a legacy add-on or a checkout uses the runner's cache root."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_ID, create=True))
    except (ValueError, AttributeError):  # not installed as an extension (or Blender before 4.2)
        return looked_up.cache_root()


def package_index() -> str:
    prefs = looked_up.preferences()
    index = prefs.package_index.strip() if prefs else ""
    return bpy.path.abspath(index) if index and "://" not in index else index  # a //relative folder


def with_cluster() -> bool:
    """Ray goes into the environment too while the Cluster preference is on."""
    prefs = looked_up.preferences()
    return bool(prefs and prefs.cluster != "NONE")


def setup_problem() -> str | None:
    prefs = looked_up.preferences()
    downloads = bool(prefs and prefs.allow_downloads)
    running = environment.running() is not None
    return environment.setup_problem(package_index(), looked_up.online_access(), downloads, running)


def show(context: bpy.types.Context, job: environment.SetupJob) -> None:
    """Move the job's state into the window manager, where the panel and the preferences draw it."""
    state = context.window_manager.unsample.setup
    state.progress = job.fraction()
    state.stage = job.stage()
    state.eta = job.eta()
    state.log_path = str(job.log_path)
    state.message = job.message
    status = {None: "RUNNING", "ok": "FINISHED", "failed": "FAILED", "cancelled": "CANCELLED"}[job.outcome]
    if state.status != status:
        state.status = status


class SEQUENCER_OT_unsample_setup_worker(bpy.types.Operator):
    """Install torch, diffusers and the worker's other pinned packages into a new Python environment in the
    extension's user folder (about 2.5 GB with CUDA, 200 MB for the CPU), and Ray while Cluster is on; check it and
    make it the Worker Python"""

    bl_idname = "sequencer.unsample_setup_worker"
    bl_label = "Set Up Worker"
    bl_options = {"REGISTER"}

    python: bpy.props.StringProperty(
        name="Python",
        description="The Python the environment is made from. Empty: Blender's own",
        options={"HIDDEN", "SKIP_SAVE"},
    )

    _timer = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        problem = setup_problem()
        if problem:
            cls.poll_message_set(problem)
        return problem is None

    def start(self, context: bpy.types.Context) -> environment.SetupJob | None:
        try:
            # The environment Worker Python runs from now is left alone: the new one is built beside it.
            job = environment.start(
                self.python or sys.executable,
                setup_root(),
                package_index(),
                cluster=with_cluster(),
                worker_python=looked_up.worker_python(),
            )
        except (OSError, RuntimeError) as error:
            self.report({"ERROR"}, f"Cannot set up the worker: {error}")
            return None
        show(context, job)
        return job

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.start(context) is None:
            return {"CANCELLED"}
        manager = context.window_manager
        # On the main window: closing the Preferences window, where the button also is, must not stop it.
        window = manager.windows[0] if len(manager.windows) else context.window
        self._timer = manager.event_timer_add(TIMER_INTERVAL, window=window)
        try:
            with context.temp_override(window=window, area=None, region=None):
                manager.modal_handler_add(self)
        except (TypeError, RuntimeError):
            manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        job = environment.latest()
        show(context, job)
        if not job.done:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self.finish(context, job)

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender is quitting (or its window closes) while the set-up runs: no uv is left behind.
        environment.cancel_running()
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)

    def execute(self, context: bpy.types.Context) -> set[str]:
        job = self.start(context)
        if job is None:
            return {"CANCELLED"}
        last_print = time.monotonic()
        while not job.done:
            job.wait(0.1)
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                print(f"Unsample: setting up the worker, {job.fraction():.0%} {job.stage()}", flush=True)
        return self.finish(context, job)

    def finish(self, context: bpy.types.Context, job: environment.SetupJob) -> set[str]:
        show(context, job)
        if job.outcome != "ok":
            self.report({"WARNING"} if job.outcome == "cancelled" else {"ERROR"}, job.message)
            return {"CANCELLED"}
        # Only now, with its check passed: a failed set-up leaves the old Worker Python as it was. The
        # environment it pointed at stays too (a job may still run from it); the next set-up reuses it.
        prefs = looked_up.preferences()
        if prefs is not None:
            prefs.worker_python = str(job.python)
        forget_worker_reports()
        forget_cluster_reports()  # Ray may be there now
        packages = (job.report or {}).get("packages", {})
        devices = (job.report or {}).get("devices", ["cpu"])
        message = f"Worker set up: torch {packages.get('torch')} ({devices[0]}) in {job.env}"
        context.window_manager.unsample.setup.message = message
        self.report({"INFO"}, message)
        return {"FINISHED"}
