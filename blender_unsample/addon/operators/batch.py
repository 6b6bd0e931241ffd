"""What Restyle, Preview and Resume share: queue strips, then drive the batch to its end.

Interactively the batch runs under a modal operator woken by a timer, so Blender stays usable
and Esc cancels; from scripts and in background mode ``execute`` blocks until the batch is over.
None of them starts a job on a worker Python that is known to lack its packages: it could only fail.
"""

from __future__ import annotations

import time

import bpy

from ..cluster import cluster_problem
from ..runner import RUNNER, preferences, worker_python
from ..strips import has_strips
from ..worker import settled_worker_report, worker_report
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


class BatchOperator:
    """Mixin for operators that queue strips on the runner. Subclasses pick the strips."""

    preview = False
    _driving = False  # a modal operator is already moving the batch forward
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
        prefs = preferences()
        if prefs is None or cls.preview:  # a preview is one context window: it runs on the worker alone
            return None
        return cluster_problem(prefs.cluster, prefs.cluster_address)

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
        BatchOperator._driving = False
        self._report_outcomes()
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender is closing the window or quitting while the batch runs.
        RUNNER.cancel()
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
        BatchOperator._driving = False

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
