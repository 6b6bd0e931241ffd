"""The "Unsample" tab in the Sequencer sidebar, and the job's progress in the status bar."""

from __future__ import annotations

import time
from typing import Any

import bpy

from ...engine.protocol import MODEL_FILE_SUFFIXES, REFINABLE_SAMPLERS
from ..jobs.paths import cache_usage
from ..jobs.runner import RUNNER, strip_problem
from ..jobs.strips import strips_to_restyle
from ..operators.batch import checkpoint_problem
from ..prefs import ADDON_ID, cluster_token_file, latent_cache_folder, preferences, worker_python
from ..properties import processing_size
from ..worker import cluster
from ..worker.process import worker_report
from .status import draw_cluster_state, draw_setup_gate, draw_setup_state, format_eta, wrapped

ACTIVE = {"EXPORTING", "RUNNING"}


class _SidebarPanel:
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Unsample"


class _SettingsPanel(_SidebarPanel):
    """A sub-panel of the Unsample tab: some of the scene's settings, labels left of the fields."""

    bl_parent_id = "SEQUENCER_PT_unsample"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        self.layout.use_property_split = True
        self.draw_settings(self.layout, context.scene.unsample, context)

    def draw_settings(self, layout: bpy.types.UILayout, settings: Any, context: bpy.types.Context) -> None:
        raise NotImplementedError


class SEQUENCER_PT_unsample(_SidebarPanel, bpy.types.Panel):
    bl_label = "Unsample"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.scene is not None

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = context.scene
        settings = scene.unsample
        strips = strips_to_restyle(scene)
        reasons = [strip_problem(scene, s) for s in strips]
        usable = [s for s, reason in zip(strips, reasons, strict=True) if reason is None]
        width = context.region.width if context.region else 300

        if not strips:
            layout.label(text="Select strips to restyle", icon="INFO")
        elif len(strips) == 1:
            wrapped(layout, reasons[0] or strips[0].name, width, "ERROR" if reasons[0] else "SEQUENCE")
        else:
            layout.label(text=f"{len(usable)} of {len(strips)} selected strips can be restyled", icon="SEQUENCE")

        draw_worker_problem(layout, context)
        draw_prompts(layout, settings, width)
        checkpoint = checkpoint_problem(settings)
        if checkpoint:  # said here, not only in the grey button's tooltip
            wrapped(layout, checkpoint, width, "ERROR")
        row = layout.row(align=True)
        row.scale_y = 1.5
        label = "Restyle" if len(usable) < 2 else f"Restyle {len(usable)} Strips"
        row.operator("sequencer.unsample_restyle", text=label, icon="BRUSHES_ALL")
        row.operator("sequencer.unsample_preview", text="", icon="HIDE_OFF")
        draw_job_box(layout, context)
        draw_cache_line(layout)


# The unsample prompt's choices as one row of buttons under the style prompt: short labels fit
# the sidebar; each button's tooltip is the choice's description.
_UNSAMPLE_CHOICES = (("SOURCE", "Describe"), ("SAME", "Same as Style"), ("BLANK", "Blank"))


def draw_prompts(layout: bpy.types.UILayout, settings: bpy.types.PropertyGroup, width: int) -> None:
    """The style prompt, and right under it what the unsample pass conditions on: a description of
    the footage (the default: it stays put while styles change, so the cache pays off), or one
    click to the style prompt itself or a blank one."""
    column = layout.column(align=True)
    # Labelled: once both hold text, their placeholders no longer say which is which.
    column.prop(settings, "prompt", text="Style", placeholder="e.g. an oil painting")
    describing = settings.unsample_prompt_mode == "SOURCE"
    source = column.row(align=True)
    source.active = describing  # kept in view, greyed out, so the text is not lost from sight
    source.prop(settings, "unsample_prompt", text="Source", placeholder="what the footage shows")
    choices = column.row(align=True)
    for mode, text in _UNSAMPLE_CHOICES:
        choices.prop_enum(settings, "unsample_prompt_mode", mode, text=text)
    if describing and not settings.unsample_prompt.strip():
        hint = "Unsampling with a blank prompt. Describe the footage for a closer round trip."
        wrapped(layout, hint, width, "INFO")


_cache_reading = [0.0, -1.0]  # (bytes, when read): the folder is read at most every few seconds


def forget_cache_reading() -> None:
    """Read the cache folder again on the next draw (after clearing it, say)."""
    _cache_reading[1] = -1.0


def draw_cache_line(layout: bpy.types.UILayout) -> None:
    now = time.monotonic()
    if now - _cache_reading[1] > 5.0:
        _cache_reading[:] = [cache_usage(latent_cache_folder()), now]
    if _cache_reading[0] <= 0:
        return
    row = layout.row(align=True)
    row.label(text=f"Unsample cache: {size_text(_cache_reading[0])}", icon="FILE_CACHE")
    row.operator("sequencer.unsample_clear_cache", text="Clear")


def size_text(size: float) -> str:
    """Bytes as the largest unit that keeps a number of at least 1 (a few small entries are KB)."""
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _worker_state() -> dict | None:
    """The worker Python's report; while it is being asked, a timer redraws the panel once it is in."""
    report = worker_report(worker_python())
    if report is None and not bpy.app.timers.is_registered(_redraw_once_reported):
        bpy.app.timers.register(_redraw_once_reported, first_interval=0.5)
    return report


def _redraw_once_reported() -> float | None:
    if worker_report(worker_python()) is None:
        return 0.5
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()
    return None


def draw_worker_problem(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    """A warning when the worker Python cannot run jobs (no torch, say): before a job fails on it,
    with Set Up Worker, which installs what it lacks; or the set-up's progress while it runs."""
    width = context.region.width if context.region else 300
    if context.window_manager.unsample.setup.status == "RUNNING":
        draw_setup_state(layout.box(), context, width - 50)
        return
    prefs = preferences()
    problem = prefs and cluster.cluster_problem(prefs.cluster, prefs.cluster_address, cluster_token_file())
    if problem:
        row = layout.row()
        wrapped(row, problem, width - 50, "ERROR")
        row.operator("preferences.addon_show", text="", icon="PREFERENCES").module = ADDON_ID
    report = _worker_state()
    if not report or not report.get("missing"):
        return
    box = layout.box()
    names = report["missing"]
    missing = ", ".join(names[:2]) + (f" and {len(names) - 2} more packages" if len(names) > 2 else "")
    text = report.get("error") or f"The worker Python lacks {missing}."
    text += (
        " Set Up Worker installs them (about 2.5 GB with CUDA, 200 MB for the CPU), or set Worker Python"
        " to an environment that has them."
    )
    wrapped(box, text, width - 50, "ERROR")  # narrower: the box's margins and the icon
    draw_setup_state(box, context, width - 50)
    draw_setup_gate(box, context, width - 50, downloads=True)
    row = box.row(align=True)
    row.operator("sequencer.unsample_setup_worker", icon="IMPORT")
    row.operator("preferences.addon_show", text="", icon="PREFERENCES").module = ADDON_ID


def draw_job_box(layout: bpy.types.UILayout, context: bpy.types.Context) -> None:
    state = context.window_manager.unsample
    if state.status == "IDLE":
        return
    box = layout.box()
    width = context.region.width if context.region else 300
    if state.status in ACTIVE:
        header = state.strip_name if state.strip_count < 2 else f"Strip {state.strip_index} of {state.strip_count}"
        box.label(text=header, icon="SEQUENCE")
        box.progress(factor=state.progress, type="BAR", text=f"{state.progress:.0%}  {state.stage}")
        if state.cluster_strips:
            box.label(text=f"{state.cluster_done} of {state.cluster_strips} strips done on the cluster")
        row = box.row()
        row.label(text=format_eta(state.eta), icon="TIME")
        decoding = state.frames_done > 0
        row.label(
            text=f"{state.frames_done}/{state.frames_total} frames" if decoding else f"{state.frames_total} frames"
        )
        box.operator("sequencer.unsample_cancel", text="Cancel", icon="CANCEL")
        return
    icon = {"FINISHED": "CHECKMARK", "CANCELLED": "CANCEL", "FAILED": "ERROR"}[state.status]
    wrapped(box, state.message or state.status.title(), width, icon)
    if RUNNER.resumable:
        box.operator("sequencer.unsample_resume", text="Resume", icon="RECOVER_LAST")
    if state.status == "FAILED" and state.log_tail:
        column = box.column(align=True)
        column.scale_y = 0.8
        for line in state.log_tail.splitlines()[-3:]:
            column.label(text=line[-80:])


class SEQUENCER_PT_unsample_prompts(_SettingsPanel, bpy.types.Panel):
    bl_label = "Prompts"
    bl_options = set()  # open: the negative prompt is used often

    def draw_settings(self, layout: bpy.types.UILayout, settings: Any, context: bpy.types.Context) -> None:
        layout.prop(settings, "negative_prompt")


class SEQUENCER_PT_unsample_models(_SettingsPanel, bpy.types.Panel):
    bl_label = "Models"

    def draw_settings(self, layout: bpy.types.UILayout, settings: Any, context: bpy.types.Context) -> None:
        layout.prop(settings, "family")
        layout.prop(settings, "checkpoint", placeholder="Default")
        row = layout.row(heading="Motion Module")
        row.prop(settings, "use_motion_module", text="")
        sub = row.row()
        sub.active = settings.use_motion_module
        sub.prop(settings, "motion_module", text="", placeholder="Default")
        row = layout.row()
        row.active = settings.control != "none"
        row.prop(settings, "controlnet_model", placeholder="Default")
        layout.prop(settings, "vae", placeholder="Checkpoint's own")
        if settings.checkpoint.lower().endswith(MODEL_FILE_SUFFIXES):
            layout.prop(settings, "config", placeholder="Reference model (Hugging Face cache)")
        layout.label(text="LoRAs")
        row = layout.row()
        row.template_list("SEQUENCER_UL_unsample_loras", "", settings, "loras", settings, "lora_index", rows=2)
        column = row.column(align=True)
        column.operator("sequencer.unsample_lora_add", text="", icon="ADD")
        column.operator("sequencer.unsample_lora_remove", text="", icon="REMOVE")
        report = _worker_state()
        if report is None:
            layout.label(text="Checking the worker Python…", icon="TIME")
        elif not report.get("missing"):
            devices = report["devices"][0]
            layout.label(text=f"Worker: torch {report['packages']['torch']}, {devices}", icon="CHECKMARK")
        draw_cluster_state(layout, context, context.region.width if context.region else 300)


class SEQUENCER_UL_unsample_loras(bpy.types.UIList):
    """The LoRA list: on/off, file, weight."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        sub = row.row(align=True)
        sub.active = item.enabled
        sub.prop(item, "path", text="", emboss=False, placeholder="LoRA file")
        sub.prop(item, "weight", text="")


class SEQUENCER_PT_unsample_sampling(_SettingsPanel, bpy.types.Panel):
    bl_label = "Sampling"

    def draw_settings(self, layout: bpy.types.UILayout, settings: Any, context: bpy.types.Context) -> None:
        layout.prop(settings, "steps")
        layout.prop(settings, "sampler")
        layout.prop(settings, "scheduler")
        column = layout.column(align=True)
        column.prop(settings, "unsample_cfg")
        column.prop(settings, "cfg")
        row = layout.row()
        row.active = settings.sampler in REFINABLE_SAMPLERS  # DPM++ 2M has no step-local inverse to refine
        row.prop(settings, "inversion_refinement", text="Refinement")
        layout.prop(settings, "noise")
        row = layout.row()
        row.active = settings.noise > 0
        row.prop(settings, "seed")


class SEQUENCER_PT_unsample_control(_SettingsPanel, bpy.types.Panel):
    bl_label = "Control"

    def draw_settings(self, layout: bpy.types.UILayout, settings: Any, context: bpy.types.Context) -> None:
        layout.prop(settings, "control")
        column = layout.column(align=True)
        column.active = settings.control != "none"
        column.prop(settings, "controlnet_strength")
        column.prop(settings, "control_start")
        column.prop(settings, "control_end")


class SEQUENCER_PT_unsample_frames(_SettingsPanel, bpy.types.Panel):
    bl_label = "Frames"

    def draw_settings(self, layout: bpy.types.UILayout, settings: Any, context: bpy.types.Context) -> None:
        layout.prop(settings, "resolution")
        if settings.resolution == "CUSTOM":
            column = layout.column(align=True)
            column.prop(settings, "width")
            column.prop(settings, "height")
        width, height = processing_size(settings, context.scene)
        layout.label(text=f"Model works at {width} x {height}", icon="IMAGE_DATA")
        column = layout.column(align=True)
        column.prop(settings, "context")
        column.prop(settings, "overlap")
        layout.prop(settings, "fusion")
        layout.prop(settings, "looped")
        layout.prop(settings, "frame_range")


def draw_status_bar(self: bpy.types.Header, context: bpy.types.Context) -> None:
    state = context.window_manager.unsample
    if state.status not in ACTIVE or not RUNNER.busy:
        return
    batch = f" {state.strip_index}/{state.strip_count}" if state.strip_count > 1 else ""
    self.layout.progress(factor=state.progress, type="BAR", text=f"Unsample{batch} {state.progress:.0%}")


classes = (
    SEQUENCER_UL_unsample_loras,
    SEQUENCER_PT_unsample,
    SEQUENCER_PT_unsample_prompts,
    SEQUENCER_PT_unsample_models,
    SEQUENCER_PT_unsample_sampling,
    SEQUENCER_PT_unsample_control,
    SEQUENCER_PT_unsample_frames,
)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register_classes()
    bpy.types.STATUSBAR_HT_header.append(draw_status_bar)


def unregister() -> None:
    if bpy.app.timers.is_registered(_redraw_once_reported):
        bpy.app.timers.unregister(_redraw_once_reported)  # it would call into a disabled add-on
    bpy.types.STATUSBAR_HT_header.remove(draw_status_bar)
    _unregister_classes()
