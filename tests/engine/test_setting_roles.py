"""Every job setting declares its role once; what keys the unsample cache and what makes a worker
reload its models follow from it. Each field is tried, so a new setting is covered the day it is added."""

import dataclasses

import pytest
import torch

from blender_unsample.engine.cluster.actors import StripWorker
from blender_unsample.engine.job.devices import Placement
from blender_unsample.engine.job.latent_cache import cache_key, styled_key
from blender_unsample.engine.protocol import RELOAD_ROLES, RESAMPLE_ROLES, UNSAMPLE_ROLES, JobSpec, Role

FIELDS = dataclasses.fields(JobSpec)
CPU = Placement(torch.device("cpu"), torch.float32, torch.float32)
PIXELS = "0" * 64  # frames.pixel_digest of the source frames: the same frames throughout
# A job with every option on a value from which each can move, and its own unsample prompt: the style
# prompt is then a resample setting alone.
BASE = JobSpec(
    frames="/clips/shot", out="/renders/shot", prompt="ink", unsample_prompt="a street", control="canny",
    work_dir="/tmp/w", cache_dir="/tmp/c",
)  # fmt: skip


def another_value(spec_field: dataclasses.Field, value: object) -> object:
    """A different valid value for the setting."""
    meta = spec_field.metadata
    if "choices" in meta:
        return next(choice for choice in meta["choices"] if choice != value)
    if meta.get("kind") is list:
        return [*value, "/loras/more.safetensors=0.5"]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1 if value + 1 <= meta["high"] else value - 1
    return f"{value or ''}/other"


def changed(spec: JobSpec, name: str) -> JobSpec:
    spec_field = next(f for f in FIELDS if f.name == name)
    return dataclasses.replace(spec, **{name: another_value(spec_field, getattr(spec, name))})


def keys(spec: JobSpec) -> tuple[str, str]:
    unsampled = cache_key(spec, PIXELS, (512, 512), CPU)
    return unsampled, styled_key(spec, unsampled)


def names(*roles: Role) -> list[str]:
    return [f.name for f in FIELDS if f.metadata["role"] in roles]


def test_every_setting_declares_one_role():
    assert all(isinstance(f.metadata.get("role"), Role) for f in FIELDS), [f.name for f in FIELDS]
    assert {f.metadata["role"] for f in FIELDS} == set(Role), "every role is some setting's"


@pytest.mark.parametrize("name", names(*UNSAMPLE_ROLES))
def test_a_change_to_an_unsample_setting_misses_the_cache(name):
    before, after = keys(BASE), keys(changed(BASE, name))
    assert before[0] != after[0] and before[1] != after[1]


@pytest.mark.parametrize("name", names(*RESAMPLE_ROLES))
def test_a_change_to_a_resample_setting_reuses_the_unsampled_latents(name):
    before, after = keys(BASE), keys(changed(BASE, name))
    assert before[0] == after[0], "the unsample pass is taken from the cache"
    assert before[1] != after[1], "the styled latents are not"


@pytest.mark.parametrize("name", names(Role.CONTROL, Role.CONTROL_MODEL))
def test_with_control_while_unsampling_a_control_setting_misses_the_cache(name):
    base = dataclasses.replace(BASE, control_in_unsample=True)
    assert keys(base)[0] != keys(changed(base, name))[0]


@pytest.mark.parametrize("name", names(Role.INPUT, Role.MEMORY, Role.FILES))
def test_a_change_that_leaves_the_frames_as_they_are_finds_both_entries(name):
    assert keys(BASE) == keys(changed(BASE, name))


@pytest.mark.parametrize("name", [f.name for f in FIELDS])
def test_a_worker_that_keeps_its_models_reloads_them_exactly_when_a_reload_setting_changes(name, monkeypatch):
    from blender_unsample.engine.cluster import actors

    @dataclasses.dataclass
    class Loaded:  # stands for the models: the worker hands out a copy of the record
        spec: JobSpec

    loads = []
    monkeypatch.setattr(
        actors, "load_components", lambda spec, *args, **kwargs: loads.append(Loaded(spec)) or loads[-1]
    )
    worker = StripWorker()
    worker._load(BASE)
    worker._load(changed(BASE, name))
    role = next(f.metadata["role"] for f in FIELDS if f.name == name)
    assert len(loads) == (2 if role in RELOAD_ROLES else 1)
