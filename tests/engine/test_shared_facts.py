"""The add-on and the worker agree on every fact they share, and engine/protocol.py owns each.

The add-on's modules import bpy, so they are read here as source (``ast``); ``addon/jobs/paths.py`` is
pure and is loaded as it is. The engine's side is checked by running it: each protocol name must be
something the worker really does, and each thing the worker does must be a protocol name.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from blender_unsample.engine import protocol

ROOT = Path(__file__).resolve().parents[2]

PACKAGE = Path(protocol.__file__).resolve().parents[1]
ADDON = PACKAGE / "addon"
PATHS_MODULE = ADDON / "jobs" / "paths.py"
ENGINE = PACKAGE / "engine"


def source(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def addon_files() -> list[Path]:
    return sorted(ADDON.rglob("*.py"))


def load_addon_paths():
    """addon/jobs/paths.py, loaded without the add-on package (whose __init__ imports bpy)."""
    spec = importlib.util.spec_from_file_location("blender_unsample.addon.jobs.paths", PATHS_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_string(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def addon_value(path: Path, name: str) -> ast.expr:
    """The expression a module-level name of an add-on module is assigned."""
    for node in source(path).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            return node.value
    raise AssertionError(f"{path.name} no longer defines {name}: update this test")


def constant_strings(node: ast.AST) -> list[str]:
    """The strings of a literal tuple, list or set (or a lone string)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    assert isinstance(node, ast.Tuple | ast.List | ast.Set), ast.unparse(node)
    return [element.value for element in node.elts]


def enum_property(path: Path, name: str) -> ast.Call:
    """The ``bpy.props.EnumProperty(...)`` call that declares the property ``name``."""
    for node in ast.walk(source(path)):
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id == name and isinstance(node.annotation, ast.Call):
            call = node.annotation
            if ast.unparse(call.func).endswith("EnumProperty"):
                return call
    raise AssertionError(f"no enum property {name} in {path.name}")


def keyword(call: ast.Call, name: str) -> ast.expr:
    return next(k.value for k in call.keywords if k.arg == name)


def assert_enum_mirrors(path: Path, prop: str, protocol_name: str, spec_field: str) -> None:
    """An add-on enum offers exactly the protocol's choices (written out or built from the protocol
    name), and defaults to JobSpec's default."""
    call = enum_property(path, prop)
    items = keyword(call, "items")
    if isinstance(items, ast.List | ast.Tuple) and all(isinstance(e, ast.Tuple) for e in items.elts):
        identifiers = [item.elts[0].value for item in items.elts]
        assert identifiers == list(getattr(protocol, protocol_name)), f"{path.name}: {prop} items"
    else:
        assert protocol_name in ast.unparse(items), f"{path.name}: {prop} items must come from {protocol_name}"
    default = next(f.default for f in dataclasses.fields(protocol.JobSpec) if f.name == spec_field)
    written = keyword(call, "default")
    if isinstance(written, ast.Constant):
        assert written.value == default, f"{path.name}: {prop} default"


# --- neither side's heavy imports -------------------------------------------------------------------


def test_protocol_and_addon_paths_load_without_torch_or_bpy():
    script = (
        "import sys, importlib.util\n"
        "import blender_unsample.engine.protocol\n"
        f"spec = importlib.util.spec_from_file_location('blender_unsample.addon.jobs.paths', {str(PATHS_MODULE)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted({'torch', 'bpy', 'numpy'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=PACKAGE.parent, check=True
    )
    assert result.stdout.strip() == "[]"


# --- choices: every protocol name is one the worker implements, and no other ---------------------


def test_samplers():
    from blender_unsample.engine.method import samplers

    assert list(samplers.SAMPLERS) == list(protocol.SAMPLERS)


def test_schedulers_work_for_every_family():
    from blender_unsample.engine.method import schedules
    from blender_unsample.engine.models import families

    training = torch.linspace(0.03, 14.6, 1000, dtype=torch.float64)
    for family in protocol.FAMILIES:
        published = families.family(family).ays_sigmas
        for name in protocol.SCHEDULERS:
            assert len(schedules.get_sigmas(name, 7, training_sigmas=training, ays_sigmas=published)) == 8
    with pytest.raises(ValueError):
        schedules.get_sigmas("beta", 7, training_sigmas=training)


def test_families():
    from blender_unsample.engine import tiny_models
    from blender_unsample.engine.models import families

    assert set(protocol.NATIVE_SIZE) == set(protocol.FAMILY_NAMES) == set(protocol.FAMILIES)
    assert set(protocol.FAMILY_DESCRIPTIONS) == set(protocol.FAMILIES)
    assert set(families.FAMILIES) == set(protocol.FAMILIES)
    for name, family in families.FAMILIES.items():
        assert family.label == protocol.FAMILY_NAMES[name]
        assert family.checkpoint_config_repo == protocol.DEFAULT_MODELS[name].checkpoint
    assert tuple(tiny_models.FAMILIES) == protocol.FAMILIES


def test_controls_each_have_a_hint_and_a_default_controlnet_per_family():
    from blender_unsample.engine.job.controlnet import make_hints

    frames = torch.randint(0, 256, (1, 16, 16, 3), dtype=torch.uint8).numpy()
    hinted = [kind for kind in protocol.CONTROLS if kind != "none"]
    for kind in hinted:
        assert make_hints(kind, frames).shape == frames.shape
    for family, models in protocol.DEFAULT_MODELS.items():
        assert sorted(models.controlnets) == sorted(hinted), family
    with pytest.raises(ValueError):
        make_hints("depth", frames)


def test_fusions():
    from blender_unsample.engine.method.context_windows import fusion_weights

    for kind in protocol.FUSIONS:
        assert fusion_weights(5, kind).shape == (5,)
    with pytest.raises(ValueError):
        fusion_weights(5, "gaussian")


def test_devices_are_the_ones_the_worker_knows():
    from blender_unsample.engine.errors import UnsampleError
    from blender_unsample.engine.job.devices import pick_placement

    for name in protocol.DEVICES:
        try:
            pick_placement(name)
        except UnsampleError as error:  # a device this machine lacks, but a known one
            assert "unknown device" not in str(error), name
    with pytest.raises(UnsampleError, match="unknown device"):
        pick_placement("tpu")


def test_addon_menus_offer_the_protocol_choices():
    assert_enum_mirrors(ADDON / "ui" / "preferences.py", "device", "DEVICES", "device")
    # The other choices come from JobSpec's own metadata through spec_property; each needs a label.
    tree = source(ADDON / "properties.py")
    labelled = {key.value for key in addon_value(ADDON / "properties.py", "_LABELS").keys} | set(protocol.FAMILIES)
    mirrored = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "spec_property"
    }
    fields = {f.name: f for f in dataclasses.fields(protocol.JobSpec)}
    offered = set()
    for name in mirrored:
        offered |= set(fields[name].metadata.get("choices", ()))
    assert offered, "no choice settings found: has spec_property been renamed?"
    # The family menu is JobSpec's own field, whose choices are the protocol's families.
    assert "family" in mirrored and set(fields["family"].metadata["choices"]) == set(protocol.FAMILIES)
    assert labelled == offered, f"stale labels: {labelled - offered}; choices with none: {offered - labelled}"


# --- progress stages ----------------------------------------------------------------------------


def stages_the_engine_emits() -> set[str]:
    """Stage names the worker's code passes to Progress(stage=...), tracker.start(...) and its
    sampling passes (pipeline's run._sampling_pass(stage, ...))."""
    found = set()
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(source(path)):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name == "Progress":
                found |= {k.value.value for k in node.keywords if k.arg == "stage" and is_string(k.value)}
            elif name.endswith(("tracker.start", "._sampling_pass")):
                found |= {a.value for a in node.args if is_string(a)}
    return found


def test_stages_the_engine_emits_are_the_protocol_stages():
    from blender_unsample.engine.job import progress

    assert stages_the_engine_emits() == set(protocol.STAGES)
    assert set(progress.STAGES) <= set(protocol.STAGES)


def test_addon_names_every_stage():
    text = addon_value(ADDON / "jobs" / "runner.py", "STAGE_TEXT")
    assert sorted(key.value for key in text.keys) == sorted(protocol.STAGES)


# --- file names ---------------------------------------------------------------------------------


def exported_names() -> tuple[str, str]:
    """The name the add-on gives its first exported frame, and the one it writes it under first."""
    tree = source(ADDON / "jobs" / "export.py")
    strings = [node for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)]
    frame = next(node for node in strings if ast.unparse(node).startswith("f'frame_"))
    name = eval(compile(ast.Expression(frame), "export.py", "eval"), {}, {"index": 0})
    partial = next(node for node in strings if ast.unparse(node).startswith("f'.partial-"))
    partial_name = eval(compile(ast.Expression(partial), "export.py", "eval"), {}, {"path": Path(name)})
    return name, partial_name


def addon_string(path: Path, name: str) -> str:
    return addon_value(path, name).value


def test_frames_the_addon_exports_are_the_ones_the_worker_reads(tmp_path):
    from blender_unsample.engine.job.frames import list_frames

    name, partial_name = exported_names()
    assert Path(name).suffix in protocol.FRAME_SUFFIXES
    (tmp_path / name).write_bytes(b"")
    (tmp_path / partial_name).write_bytes(b"")  # a frame being written: the worker must not take it
    assert list_frames(tmp_path) == [tmp_path / name]
    # The add-on's globs: the whole frame (export, resume, import) and the partial one (clean-up).
    assert fnmatch.fnmatch(partial_name, addon_string(ADDON / "jobs" / "export_process.py", "PARTIAL"))
    for path in (ADDON / "jobs" / "runner.py", ADDON / "jobs" / "export_process.py"):
        globs = {
            node.args[0].value
            for node in ast.walk(source(path))
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(".glob") and is_string(node.args[0])
        }
        for pattern in globs - {addon_string(ADDON / "jobs" / "export_process.py", "PARTIAL")}:
            assert fnmatch.fnmatch(name, pattern) and not fnmatch.fnmatch(partial_name, pattern), (path.name, pattern)


def test_single_model_files():
    from blender_unsample.engine.models.single_file import SINGLE_FILE_SUFFIXES

    assert set(SINGLE_FILE_SUFFIXES) == set(protocol.MODEL_FILE_SUFFIXES)


def test_the_panel_knows_every_single_model_file():
    for node in ast.walk(source(ADDON / "ui" / "panel.py")):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("checkpoint.lower().endswith"):
            suffixes = node.args[0]
            if not (isinstance(suffixes, ast.Name) and suffixes.id == "MODEL_FILE_SUFFIXES"):
                assert set(constant_strings(suffixes)) == set(protocol.MODEL_FILE_SUFFIXES)
            return
    raise AssertionError("panel.py no longer checks the checkpoint's suffix: update this test")


# --- the latent cache folder ---------------------------------------------------------------------


def test_addon_measures_and_clears_what_the_worker_caches(tmp_path, monkeypatch):
    from blender_unsample.engine.job import latent_cache

    paths = load_addon_paths()
    cache = latent_cache.LatentCache(tmp_path, limit_bytes=2**30)
    cache.put("a" * 64, torch.zeros(1, 4, 8, 8))
    cache.put("b" * 64, torch.ones(1, 4, 8, 8))
    with monkeypatch.context() as patch:  # a worker killed between writing an entry and renaming it
        patch.setattr(latent_cache.os, "replace", lambda *_: (_ for _ in ()).throw(OSError("killed")))
        with pytest.raises(OSError):
            cache.put("c" * 64, torch.ones(1, 4, 8, 8))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 3
    total = sum(p.stat().st_size for p in written)
    assert paths.cache_usage(tmp_path) == total
    assert paths.clear_cache(tmp_path) == total
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    assert cache.get("a" * 64) is None


def test_addon_reads_the_cache_where_it_tells_the_worker_to_write():
    # runner gives the worker cache_dir=str(latent_cache_folder()); every cache_usage/clear_cache
    # call in the add-on must look in that same folder, not a parent or a sibling.
    found = {"cache_dir": [], "calls": []}
    for path in addon_files():
        for node in ast.walk(source(path)):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "cache_dir":
                        found["cache_dir"].append(ast.unparse(value))
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("cache_usage", "clear_cache"):
                found["calls"].append(ast.unparse(node.args[0]))
    assert found["cache_dir"] == ["str(latent_cache_folder())"]
    assert found["calls"] and set(found["calls"]) == {"latent_cache_folder()"}, found["calls"]


# --- the doctor report --------------------------------------------------------------------------


def test_doctor_report_has_the_protocol_keys():
    from blender_unsample.engine.job import doctor

    report = doctor.report()
    assert list(report) == list(protocol.DOCTOR_REPORT_KEYS)
    assert set(report["packages"]) == set(protocol.WORKER_PACKAGES)


def test_addon_reads_only_keys_the_doctor_writes():
    """Keys read from a report (``report[...]``, ``report.get(...)``) are the doctor's, or ones the
    add-on puts in a report it makes itself when the worker cannot be asked; ``report["packages"][...]``
    names a worker package."""
    own, read, packages = set(), [], []
    for path in addon_files():
        for node in ast.walk(source(path)):
            if isinstance(node, ast.Assign) and "report" in ast.unparse(node.targets[0]):
                dicts = [node.value] if isinstance(node.value, ast.Dict) else []
            elif isinstance(node, ast.BoolOp) and "report" in ast.unparse(node.values[0]):
                dicts = [v for v in node.values if isinstance(v, ast.Dict)]
            else:
                dicts = []
            for made in dicts:
                own |= {key.value for key in made.keys}
            if isinstance(node, ast.Subscript) and is_string(node.slice):
                holder, key = node.value, node.slice.value
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and node.args
                and is_string(node.args[0])
            ):
                holder, key = node.func.value, node.args[0].value
            else:
                continue
            if "report" not in ast.unparse(holder):
                continue
            if isinstance(holder, ast.Subscript) and ast.unparse(holder.slice) == "'packages'":
                packages.append(key)
            else:
                read.append((path.name, key))
    assert read, "no report reads found: has the report been renamed?"
    written = {*protocol.DOCTOR_REPORT_KEYS, *protocol.CLUSTER_REPORT_KEYS, *protocol.CLUSTER_FAILURE_KEYS}
    unknown = [(name, key) for name, key in read if key not in written | own]
    assert not unknown
    assert set(packages) <= set(protocol.WORKER_PACKAGES)


def test_the_cluster_doctor_writes_the_keys_the_protocol_names():
    # Its failure report is checked where an unreachable cluster is (test_cluster.py).
    pytest.importorskip("ray")
    from blender_unsample.engine.cluster.connect import ClusterInfo

    assert tuple(ClusterInfo("auto", 1, 2, 16).report()) == protocol.CLUSTER_REPORT_KEYS


def test_the_cluster_extra_pins_the_same_ray_as_the_shipped_requirements():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    shipped = ROOT / "blender_unsample" / "engine" / "requirements-cluster.txt"
    lines = [line for line in shipped.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    assert extra["cluster"] == lines
