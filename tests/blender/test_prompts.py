"""The unsample prompt in real Blender: describing the source is the default, sits under the style
prompt, and keeps the cached unsample pass valid while the style changes."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import bpy
import pytest
from conftest import styled_strips

from blender_unsample.addon.properties import job_spec
from blender_unsample.addon.ui import panel

_UI = bpy.types.UILayout.bl_rna
PROMPT_FIELDS = {"prompt": "Style", "unsample_prompt": "Source"}


class OperatorProperties:
    """What ``layout.operator`` returns: only the operator's own properties can be set."""

    def __init__(self, idname: str) -> None:
        module, name = idname.split(".")
        rna = getattr(getattr(bpy.ops, module), name).get_rna_type()  # KeyError: no such operator
        object.__setattr__(self, "_names", set(rna.properties.keys()))

    def __setattr__(self, name: str, value: object) -> None:
        assert name in self._names, f"the operator has no property {name!r}"


class Layout:
    """Stands in for ``UILayout`` where the bpy module has no window: each call is checked against
    this Blender's own UILayout API (argument names, required arguments, icon names, property and
    enum item names, operators) and recorded in drawing order."""

    def __init__(self, drawn: list, active: bool = True) -> None:
        object.__setattr__(self, "drawn", drawn)
        object.__setattr__(self, "active", active)

    def __setattr__(self, name: str, value: object) -> None:
        assert name in _UI.properties, f"UILayout has no attribute {name!r}"
        object.__setattr__(self, name, value)

    def __getattr__(self, function: str):
        if function.startswith("_"):
            raise AttributeError(function)
        assert function in _UI.functions, f"UILayout has no function {function!r}"
        inputs = {p.identifier: p for p in _UI.functions[function].parameters if not p.is_output}
        outputs = [p for p in _UI.functions[function].parameters if p.is_output]

        def call(*args: object, **kwargs: object) -> object:
            bound = dict(zip(inputs, args, strict=False)) | kwargs
            assert set(bound) <= set(inputs), f"{function}() has no argument {set(bound) - set(inputs)}"
            assert all(name in bound for name, p in inputs.items() if p.is_required), f"{function}() lacks one"
            for name, value in bound.items():
                if inputs[name].type == "ENUM" and not inputs[name].is_enum_flag:
                    assert value in inputs[name].enum_items, f"{function}({name}={value!r}) is not a valid item"
            _check_property(function, bound)
            self.drawn.append((function, bound, self.active))
            if function == "operator":
                return OperatorProperties(bound["operator"])
            return Layout(self.drawn, self.active) if outputs and outputs[0].identifier == "layout" else None

        return call


def _check_property(function: str, bound: dict) -> None:
    if "data" not in bound or "property" not in bound:
        return
    properties = bound["data"].bl_rna.properties
    assert bound["property"] in properties, f"{function}: no property {bound['property']!r}"
    if "value" in bound:
        assert bound["value"] in properties[bound["property"]].enum_items, f"no enum item {bound['value']!r}"


def draw(panel_class, scene) -> list:
    """What ``panel_class`` draws for ``scene`` in a sidebar 320 pixels wide."""
    context = SimpleNamespace(scene=scene, window_manager=bpy.context.window_manager, region=SimpleNamespace(width=320))
    drawn = []
    if not hasattr(panel_class, "poll") or panel_class.poll(context):
        # A stand-in for the panel instance Blender makes: its layout, and the class's own methods.
        panel = SimpleNamespace(layout=Layout(drawn))
        if hasattr(panel_class, "draw_settings"):
            panel.draw_settings = functools.partial(panel_class.draw_settings, panel)
        panel_class.draw(panel, context)
    return drawn


def draw_preferences(addon_preferences) -> list:
    """What the add-on's preferences draw, with a recording layout."""
    drawn = []

    class Drawn:  # the preferences, with a recording layout
        layout = Layout(drawn)

        def __getattr__(self, name: str) -> object:
            return getattr(addon_preferences, name)

    type(addon_preferences).draw(Drawn(), bpy.context)
    return drawn


def props(drawn: list) -> list[tuple]:
    """The settings drawn, in order: (property, enum value or None, whether it is drawn active)."""
    return [(b["property"], b.get("value"), active) for f, b, active in drawn if "property" in b]


def labels(drawn: list) -> str:
    return " ".join(b.get("text", "") for f, b, _ in drawn if f == "label")


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [
        ("SAME", "a street at night", None),  # the style prompt
        ("BLANK", "a street at night", ""),
        ("SOURCE", "a street at night", "a street at night"),
        ("SOURCE", "", ""),
        ("SOURCE", "   ", ""),
    ],
)
def test_each_unsample_choice_reaches_the_job(addon, mode, text, expected):
    settings = bpy.context.scene.unsample
    settings.unsample_prompt_mode, settings.unsample_prompt = mode, text
    spec = job_spec(settings, "in", "out", (64, 40))
    assert spec.unsample_prompt == expected
    assert spec.source_prompt == (settings.prompt if expected is None else expected)


def test_a_new_scene_unsamples_with_a_description_of_the_source(addon):
    for scene in (bpy.context.scene, bpy.data.scenes.new("Another")):
        assert scene.unsample.unsample_prompt_mode == "SOURCE"
        assert scene.unsample.unsample_prompt == ""


def test_a_scene_saved_before_keeps_its_unsample_choice(addon):
    # Saved scenes store the choice as a number: 0 Same as Style, 1 Blank, 2 Describe Source.
    settings = bpy.context.scene.unsample
    for stored, mode in ((0, "SAME"), (1, "BLANK"), (2, "SOURCE")):
        settings["unsample_prompt_mode"] = stored
        assert settings.unsample_prompt_mode == mode


def test_with_the_defaults_a_second_style_reuses_the_cached_unsample_pass(image_strip):
    scene = bpy.context.scene
    state = bpy.context.window_manager.unsample
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    assert "from the cache" not in state.message
    scene.unsample.prompt = "a pencil drawing"
    for strip in styled_strips(scene):
        strip.select = False
    image_strip.select = True
    assert bpy.ops.sequencer.unsample_restyle() == {"FINISHED"}
    assert "its unsample pass taken from the cache" in state.message
    assert len(styled_strips(scene)) == 2


def test_the_source_description_and_its_choices_sit_under_the_style_prompt(image_strip):
    scene = bpy.context.scene
    drawn = props(draw(panel.SEQUENCER_PT_unsample, scene))
    order = [name for name, _, _ in drawn]
    assert order[:2] == ["prompt", "unsample_prompt"], "the description comes right after the style prompt"
    choices = [value for name, value, _ in drawn if name == "unsample_prompt_mode"]
    assert choices == ["SOURCE", "SAME", "BLANK"], "each choice is one click away"
    assert ("unsample_prompt", None, True) in drawn
    sub_panel = props(draw(panel.SEQUENCER_PT_unsample_prompts, scene))
    assert "unsample_prompt_mode" not in [name for name, _, _ in sub_panel], "not a sub-panel away any more"


def test_both_prompts_are_labelled_so_filled_fields_still_say_which_is_which(image_strip):
    scene = bpy.context.scene
    drawn = [b for f, b, _ in draw(panel.SEQUENCER_PT_unsample, scene) if b.get("property") in PROMPT_FIELDS]
    assert [(b["property"], b.get("text")) for b in drawn] == list(PROMPT_FIELDS.items())


def test_a_small_cache_is_shown_in_kilobytes_not_as_zero_megabytes(image_strip, monkeypatch):
    scene = bpy.context.scene
    monkeypatch.setattr(panel, "cache_usage", lambda folder: 12 * 1024)
    panel.forget_cache_reading()
    assert "Unsample cache: 12 KB" in labels(draw(panel.SEQUENCER_PT_unsample, scene))
    monkeypatch.setattr(panel, "cache_usage", lambda folder: 3 * 2**20)
    panel.forget_cache_reading()
    assert "Unsample cache: 3 MB" in labels(draw(panel.SEQUENCER_PT_unsample, scene))
    panel.forget_cache_reading()


def test_an_empty_description_shows_a_hint_that_goes_once_the_footage_is_described(image_strip):
    scene = bpy.context.scene
    assert "blank prompt" in labels(draw(panel.SEQUENCER_PT_unsample, scene))
    scene.unsample.unsample_prompt = "a yellow square over a gradient"
    assert "blank prompt" not in labels(draw(panel.SEQUENCER_PT_unsample, scene))
    scene.unsample.unsample_prompt, scene.unsample.unsample_prompt_mode = "", "BLANK"
    assert "blank prompt" not in labels(draw(panel.SEQUENCER_PT_unsample, scene)), "Blank was chosen: no hint"


def test_with_another_choice_the_description_is_kept_in_view_but_greyed_out(image_strip):
    scene = bpy.context.scene
    scene.unsample.unsample_prompt = "a yellow square over a gradient"
    scene.unsample.unsample_prompt_mode = "SAME"
    assert ("unsample_prompt", None, False) in props(draw(panel.SEQUENCER_PT_unsample, scene))


@pytest.mark.parametrize("status", ["IDLE", "RUNNING", "FAILED"])
def test_every_panel_draws_without_errors(image_strip, status):
    scene = bpy.context.scene
    state = bpy.context.window_manager.unsample
    state.status, state.message, state.log_tail = status, "something happened", "a line\nanother"
    scene.unsample.loras.add().path = "/tmp/style.safetensors"
    for panel_class in panel.classes:
        if issubclass(panel_class, bpy.types.Panel):
            assert draw(panel_class, scene), f"{panel_class.bl_label} drew nothing"
    context = SimpleNamespace(scene=scene, window_manager=bpy.context.window_manager)
    row = Layout([])
    panel.SEQUENCER_UL_unsample_loras.draw_item(
        None, context, row, scene.unsample, scene.unsample.loras[0], 0, None, ""
    )
    assert [b["property"] for _, b, _ in row.drawn if "property" in b] == ["enabled", "path", "weight"]


# Job settings a scene does not hold under their own name, and where they come from instead.
FROM_ELSEWHERE = {
    "model": "the Checkpoint field (checkpoint), resolved against the Models Folder",
    "motion_adapter": "the Motion Module field and its switch",
    "controlnet": "the ControlNet field (controlnet_model)",
    "control_in_unsample": "the command line only: Blender's ControlNet acts on the style pass",
}


def test_every_setting_of_the_passes_is_the_scenes_or_the_preferences(addon):
    from blender_unsample.addon.properties import MIRRORED
    from blender_unsample.addon.ui.preferences import UnsamplePreferences
    from blender_unsample.engine.protocol import RESAMPLE_ROLES, UNSAMPLE_ROLES, settings_with

    preferences = set(UnsamplePreferences.__annotations__)
    unplaced = set(settings_with(*UNSAMPLE_ROLES, *RESAMPLE_ROLES)) - set(MIRRORED) - preferences - set(FROM_ELSEWHERE)
    assert not unplaced, "a job setting Blender never sets: add it to the scene settings or the preferences"


def test_each_scene_setting_named_as_a_job_setting_reaches_the_job(addon):
    from blender_unsample.addon.properties import MIRRORED

    settings = bpy.context.scene.unsample
    built = {"loras", "width", "height"}  # a list of entries, and the size the job is given
    for name in sorted(set(MIRRORED) - built):
        prop = settings.bl_rna.properties[name]
        if prop.type == "ENUM":
            value = next(item.identifier for item in prop.enum_items if item.identifier != getattr(settings, name))
        elif prop.type == "BOOLEAN":
            value = not getattr(settings, name)
        elif prop.type in {"INT", "FLOAT"}:
            value = getattr(settings, name) + 1 if getattr(settings, name) + 1 <= prop.hard_max else prop.hard_min
        else:
            value = f"{getattr(settings, name)}changed"
        setattr(settings, name, value)
        reached = getattr(job_spec(settings, "in", "out", (64, 40)), name)
        assert reached == (pytest.approx(value) if prop.type == "FLOAT" else value), name
