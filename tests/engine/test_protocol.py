import dataclasses
import json

import pytest

from blender_unsample.engine import protocol
from blender_unsample.engine.protocol import (
    Done,
    ErrorCode,
    ErrorEvent,
    FrameWritten,
    JobSpec,
    Progress,
    WarningEvent,
    event_from_json,
    event_to_json,
)


@pytest.mark.parametrize(
    "event",
    [
        Progress(stage="resample", step=3, total=16, window=2, windows=3, frames_done=0, frames_total=40,
                 fraction=0.5, eta=12.5),
        FrameWritten(name="0001.png", index=0),
        WarningEvent(message="prompt cut"),
        ErrorEvent(code="cancelled", message="cancelled", detail=""),
        Done(frames=40, out="/tmp/out", seconds=3.5),
    ],
)  # fmt: skip
def test_events_survive_a_json_line(event):
    line = event_to_json(event)
    assert "\n" not in line
    assert json.loads(line)["type"] == event.type
    assert event_from_json(line) == event


@pytest.mark.parametrize(
    "line",
    ["not json", "[1, 2]", '{"type": "party"}', '{"type": "frame", "name": "a.png"}', '{"type": "done", "x": 1}'],
)
def test_malformed_event_lines_are_refused(line):
    with pytest.raises(ValueError):
        event_from_json(line)


@pytest.mark.parametrize("name", ["../../.bashrc", "/etc/passwd", "sub/frame.png", "..", "C:frame.png", "a\\b.png"])
def test_a_frame_event_naming_a_path_instead_of_a_file_is_refused(name):
    line = event_to_json(FrameWritten(name=name, index=0))
    with pytest.raises(ValueError, match="is not a file name"):
        event_from_json(line)


def test_job_spec_fills_the_family_defaults():
    spec = JobSpec(frames="in", out="out", prompt="ink")
    defaults = protocol.DEFAULT_MODELS["sd15"]
    assert spec.model == defaults.checkpoint
    assert spec.motion_adapter == defaults.motion_adapter
    assert spec.controlnet == defaults.controlnets["canny"]
    assert spec.validate() == []
    assert spec.source_prompt == "ink"
    assert JobSpec(frames="in", out="out", prompt="ink", unsample_prompt="").source_prompt == ""


def test_default_numbers_follow_the_method():
    spec = JobSpec(frames="in", out="out", prompt="ink")
    assert (spec.sampler, spec.scheduler, spec.steps) == ("euler", "ays", 16)
    assert spec.unsample_cfg > spec.cfg
    assert spec.controlnet_strength < 0.5
    assert (spec.context, spec.overlap) == (16, 4)


def test_job_spec_round_trips_through_json():
    spec = JobSpec(frames="in", out="out", prompt="ink", steps=8, looped=True, unsample_prompt="a street")
    assert JobSpec.from_dict(json.loads(spec.to_json())) == spec


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"steps": 0}, "steps must be between 1 and 200"),
        ({"steps": 201}, "steps must be between 1 and 200"),
        ({"cfg": float("nan")}, "cfg must be a number"),
        ({"cfg": 0.5}, "cfg must be between 1.0 and 30.0"),
        ({"unsample_cfg": 31.0}, "unsample_cfg must be between 1.0 and 30.0"),
        ({"context": 0, "overlap": 0}, "context must be between 1 and 64"),
        ({"context": 65}, "context must be between 1 and 64"),
        ({"inversion_refinement": 6}, "inversion_refinement must be between 0 and 5"),
        ({"sampler": "euler_ancestral"}, "sampler must be one of euler, dpmpp_2m"),
        ({"overlap": 16}, "overlap (16) must be smaller than the context length (16)"),
        ({"width": 100}, "width must be 0 or a multiple of 8"),
        ({"prompt": "  "}, "the style prompt is empty"),
        ({"control_start": 0.7, "control_end": 0.2}, "control_start must come before control_end"),
    ],
)
def test_bad_settings_are_named(changes, fragment):
    spec = dataclasses.replace(JobSpec(frames="in", out="out", prompt="ink"), **changes)
    assert any(fragment in problem for problem in spec.validate()), spec.validate()


def test_job_files_with_unknown_or_mistyped_settings_are_refused():
    with pytest.raises(ValueError, match="unknown job settings: stpes"):
        JobSpec.from_dict({"frames": "in", "stpes": 4})
    with pytest.raises(ValueError, match=r'steps must be a whole number, got text \("4"\)'):
        JobSpec.from_dict({"frames": "in", "steps": "4"})
    with pytest.raises(ValueError, match="protocol version 99"):
        JobSpec.from_dict({"protocol": 99})
    assert JobSpec.from_dict({"cfg": 3}).cfg == 3  # a whole number is a fine float


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prompt": None}, "prompt must be text, got null"),
        ({"negative_prompt": None}, "negative_prompt must be text, got null"),
        ({"steps": None}, "steps must be a whole number, got null"),
        ({"looped": "yes"}, 'looped must be true or false, got text ("yes")'),
        ({"protocol": "1"}, 'protocol must be the number 1, got "1"'),
    ],
    ids=["null prompt", "null negative prompt", "null steps", "text for a switch", "protocol as text"],
)
def test_a_job_file_value_of_the_wrong_kind_is_named_as_written(data, message):
    with pytest.raises(ValueError) as error:
        JobSpec.from_dict({"frames": "in", "out": "out", **data})
    assert message in str(error.value)


def test_a_null_unsample_prompt_means_the_style_prompt():
    spec = JobSpec.from_dict({"frames": "in", "out": "out", "prompt": "ink", "unsample_prompt": None})
    assert spec.source_prompt == "ink"


def test_every_error_code_has_its_own_exit_code():
    codes = [code.exit_code for code in ErrorCode]
    assert len(set(codes)) == len(codes)
    assert 0 not in codes and 2 not in codes  # 0 is success, 2 is argparse's usage error


def test_lora_entries_take_an_optional_weight():
    spec = JobSpec(frames="in", out="out", prompt="ink", loras=["/m/a.safetensors", "/m/b=c.safetensors=0.5"])
    assert spec.lora_weights == [("/m/a.safetensors", 1.0), ("/m/b=c.safetensors", 0.5)]
    assert spec.validate() == []
    bad = JobSpec(frames="in", out="out", prompt="ink", loras=["/m/a.safetensors=heavy"])
    assert any("expected PATH or PATH=WEIGHT" in problem for problem in bad.validate())
    assert JobSpec.from_dict(json.loads(spec.to_json())).loras == spec.loras
    with pytest.raises(ValueError, match="list of strings"):
        JobSpec.from_dict({"loras": "a.safetensors"})
