"""What Restyle, Preview and Resume share: queue strips, then drive the batch to its end.

Interactively the batch runs under a modal operator woken by a timer, so Blender stays usable
and Esc cancels; from scripts and in background mode ``execute`` blocks until the batch is over.
None of them starts a job on a worker Python that is known to lack its packages: it could only fail.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import bpy

from ...engine.protocol import HUB_ID, MODEL_FILE_SUFFIXES
from ..jobs.runner import RUNNER
from ..jobs.strips import has_strips
from ..prefs import cluster_token_file, preferences, worker_python
from ..properties import _model_path
from ..worker.cluster import cluster_problem
from ..worker.process import settled_worker_report, worker_report
from .setup_worker import setup_problem

TIMER_INTERVAL = 0.1


def missing_text(names: list[str]) -> str:
    """The missing packages, the first two by name: "torch, diffusers and 5 more packages"."""
    more = len(names) - 2
    return ", ".join(names[:2]) + (f" and {more} more package{'s' if more > 1 else ''}" if more > 0 else "")


def worker_problem(settled: bool = False) -> str | None:
    """Why no job can run on the worker Python, from its doctor report (asked in the background).
    None while the report is still being asked for: a job then runs, and the worker's own check stops
    it at once if a package is missing. ``settled``: as poll must see it (worker.settled_worker_report)."""
    python = worker_python()
    report = settled_worker_report(python) if settled else worker_report(python)
    if not report or not report.get("missing"):
        return None
    # The fix comes first: a script sees the message cut at 200 characters (bpy.ops' poll error).
    if report.get("error"):
        what = f"Cannot start the worker Python {python}"
        fix = "check the Worker Python preference, or press Set Up Worker"
        cause = " (" + report["error"].removeprefix(f"cannot run {python}: ") + ")"
    else:
        what = f"The worker Python lacks {missing_text(report['missing'])}"
        fix = "press Set Up Worker, or set Worker Python to an environment that has them"
        cause = ""
    if bpy.context.window_manager.unsample.setup.status == "RUNNING":
        return f"{what}: wait for Set Up Worker, which is installing them{cause}"
    text = f"{what}: {fix}{cause}"
    grey = setup_problem()
    return f"{text}. Set Up Worker is grey: {grey}" if grey else text


def checkpoint_problem(settings: bpy.types.PropertyGroup) -> str | None:
    """Why the checkpoint setting cannot load: a local file or folder that is not there (as the job
    would name it: relative to the .blend, or in the Models Folder). A Hugging Face id ("org/name")
    is not a path: whether it is in the cache, or may be downloaded, only the worker can say."""
    prefs = preferences()
    value = _model_path(settings.checkpoint, prefs.models_folder if prefs else "")
    if not value or Path(value).expanduser().exists():
        return None
    if HUB_ID.match(value) and not value.lower().endswith(MODEL_FILE_SUFFIXES):
        return None
    # The path first: a script sees the message cut at 200 characters (bpy.ops' poll error).
    return (
        f"The checkpoint {value} does not exist: in the Models sub-panel choose a model file or folder, a Hugging "
        "Face id, or nothing for the default"
    )


def stop_driving() -> None:
    """Forget the modal operator that moved the batch on (the add-on is being disabled, which frees it
    without its cancel): the next Restyle drives its own batch, and its timer goes too."""
    timer, BatchOperator._driver_timer = BatchOperator._driver_timer, None
    if timer is not None:
        with contextlib.suppress(ReferenceError, RuntimeError, ValueError, AttributeError):
            bpy.context.window_manager.event_timer_remove(timer)
    BatchOperator._driving = False


class BatchOperator:
    """Mixin for operators that queue strips on the runner. Subclasses pick the strips."""

    preview = False
    _driving = False  # a modal operator is already moving the batch forward
    _driver_timer = None  # its timer, for stop_driving
    _timer = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        problem = cls.problem(context.scene) or worker_problem(settled=True)
        if problem:
            cls.poll_message_set(problem)
        return problem is None

    @classmethod
    def problem(cls, scene: bpy.types.Scene | None) -> str | None:
        """Why the operator cannot run now, in words for the greyed-out button's tooltip."""
        if scene is None or not has_strips(scene):
            return "This scene has no sequencer strips"
        problem = cls.strip_problem(scene)
        if problem:
            return problem
        if not scene.unsample.prompt.strip():
            return "Type a style prompt first"
        problem = checkpoint_problem(scene.unsample)
        if problem:
            return problem
        prefs = preferences()
        if prefs is None or cls.preview:  # a preview is one context window: it runs on the worker alone
            return None
        return cluster_problem(prefs.cluster, prefs.cluster_address, cluster_token_file())

    @classmethod
    def strip_problem(cls, scene: bpy.types.Scene) -> str | None:
        raise NotImplementedError

    def strips(self, context: bpy.types.Context) -> list:
        raise NotImplementedError

    def enqueue(self, context: bpy.types.Context) -> bool:
        strips = self.strips(context)
        if not strips:
            self.report({"WARNING"}, "Nothing to restyle: select a movie, image, scene or meta strip")
            return False
        try:
            RUNNER.enqueue(context.scene, strips, self.preview)
        except OSError as error:
            where = f" {error.filename}" if error.filename else ""
            self.report(
                {"ERROR"},
                f"Cannot create the job folder{where}: {error.strerror or error}. Check the Cache Folder "
                "preference (Preferences > Add-ons > Unsample)",
            )
            return False
        return True

    def refused(self) -> bool:
        """True, with the reason reported, where the worker Python cannot run the job: its report came
        in after poll let the call through, or a script called ``execute`` past poll."""
        problem = worker_problem()
        if problem:
            self.report({"ERROR"}, problem)
        return problem is not None

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.refused() or not self.enqueue(context):
            return {"CANCELLED"}
        if BatchOperator._driving:
            self.report({"INFO"}, "Queued after the strips already being restyled")
            return {"FINISHED"}
        BatchOperator._driving = True
        self._timer = context.window_manager.event_timer_add(TIMER_INTERVAL, window=context.window)
        BatchOperator._driver_timer = self._timer
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC" and event.value == "PRESS":
            RUNNER.cancel()
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if RUNNER.tick():
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        BatchOperator._driving, BatchOperator._driver_timer = False, None
        self._report_outcomes()
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender is closing the window or quitting while the batch runs: no tick will come again to
        # finish an ordinary cancel, so the workers are stopped for good and the strips kept for Resume.
        RUNNER.abandon("its window was closed")
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
        BatchOperator._driving, BatchOperator._driver_timer = False, None

    def execute(self, context: bpy.types.Context) -> set[str]:
        if self.refused() or not self.enqueue(context):
            return {"CANCELLED"}
        if BatchOperator._driving:
            return {"FINISHED"}
        last_print = 0.0
        while RUNNER.tick():
            time.sleep(0.02)
            if time.monotonic() - last_print > 5:
                last_print = time.monotonic()
                state = context.window_manager.unsample
                print(f"Unsample: strip {state.strip_index}/{state.strip_count} {state.stage} {state.progress:.0%}")
        return self._report_outcomes()

    def _report_outcomes(self) -> set[str]:
        failed = [o for o in RUNNER.outcomes if not o.ok]
        for outcome in RUNNER.outcomes:
            quiet = outcome.ok and not outcome.warning
            level = "INFO" if quiet else "WARNING" if outcome.ok or RUNNER.cancelled else "ERROR"
            self.report({level}, f"{outcome.strip}: {outcome.message}")
        return {"FINISHED"} if len(failed) < len(RUNNER.outcomes) else {"CANCELLED"}
