"""The two rules that hold the house together, and the repository's shape."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "blender_unsample"
HEAVY = {"torch", "diffusers", "transformers", "safetensors", "accelerate", "huggingface_hub"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "engine").rglob("*.py")), ids=lambda p: p.name)
def test_engine_never_imports_bpy(path):
    assert not imported_modules(path) & {"bpy", "bpy_extras", "mathutils", "addon_utils"}


@pytest.mark.parametrize("path", sorted((PACKAGE / "addon").rglob("*.py")), ids=lambda p: p.name)
def test_addon_never_imports_torch_or_model_libraries(path):
    assert not imported_modules(path) & HEAVY


def engine_imports(path: Path) -> set[str]:
    """The engine modules ``path`` imports, as dotted names under ``engine`` ("protocol", "method.samplers")."""
    package = path.relative_to(PACKAGE).parent.parts  # ("addon",), ("engine", "job"), ...
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            parts = (node.module or "").split(".")
            if parts[:2] != ["blender_unsample", "engine"]:
                continue
            parts = parts[1:]
        else:
            parts = [*package[: len(package) - node.level + 1], *(node.module or "").split(".")]
        if parts[:1] != ["engine"]:
            continue
        module = ".".join(p for p in parts[1:] if p)
        if module:
            names.add(module)
        else:  # `from .. import protocol`: the names are the modules
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "addon").rglob("*.py")), ids=lambda p: p.name)
def test_addon_reaches_the_engine_only_through_protocol_and_errors(path):
    assert engine_imports(path) <= {"protocol", "errors"}


# Each layer may import the ones listed after it, and nothing else of the engine (the command line's
# tiny-models command builds the test fixture models). No exceptions: the one module that reaches every
# layer, the command line, sits above them all (engine/cli.py).
LAYERS = {
    "cluster": {"job", "models", "method", "protocol", "errors"},
    "job": {"models", "method", "protocol", "errors"},
    "models": {"protocol", "errors"},
    "method": {"protocol"},
}
# The engine's own top-level modules: the shared facts at the bottom, the command line on top.
TOP_LEVEL = {
    "protocol": set(),
    "errors": {"protocol"},
    "tiny_models": {"protocol", "errors", "models"},
    "cli": {"cluster", "job", "models", "method", "protocol", "errors", "tiny_models"},
    "__main__": {"cli"},
    "__init__": set(),
}


@pytest.mark.parametrize("layer", LAYERS)
def test_engine_layers_import_only_the_layers_below(layer):
    for path in sorted((PACKAGE / "engine" / layer).rglob("*.py")):
        reached = {name.split(".")[0] for name in engine_imports(path)}
        allowed = LAYERS[layer] | {layer}
        assert reached <= allowed, f"{path.name} reaches {reached - allowed}"


def test_the_engines_top_level_modules_import_only_what_is_below_them():
    modules = {path.stem for path in (PACKAGE / "engine").glob("*.py")}
    assert modules == set(TOP_LEVEL), "a new top-level module: say where it sits"
    for name, allowed in TOP_LEVEL.items():
        reached = {module.split(".")[0] for module in engine_imports(PACKAGE / "engine" / f"{name}.py")}
        assert reached <= allowed, f"{name}.py reaches {reached - allowed}"


def module_graph(package: Path) -> dict[str, set[str]]:
    """Every module under ``package`` (dotted, from the package root) and the modules of it that it
    imports, lazily or not."""
    modules = {".".join(p.relative_to(package).with_suffix("").parts): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        here = path.relative_to(PACKAGE).parent.parts
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = [*here[: len(here) - node.level + 1], *(node.module or "").split(".")]
            base = [part for part in base if part]
            for alias in node.names:  # `from . import x` names a module; `from .x import y` names x
                for candidate in (".".join([*base, alias.name]), ".".join(base)):
                    inside = candidate.split(".", 1)[1] if candidate.startswith(package.name + ".") else ""
                    if inside in modules:
                        found.add(inside)
                        break
        graph[name] = found - {name}
    return graph


def import_circle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of imports in ``graph``, or an empty list."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (found := walk(start)):
            return found
    return []


@pytest.mark.parametrize("part", ["engine", "addon"])
def test_no_import_circles(part):
    graph = module_graph(PACKAGE / part)
    assert len(graph) > 10, "the graph was read"
    circle = import_circle(graph)
    assert not circle, " -> ".join(circle)


def test_an_import_circle_is_found():
    assert import_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert import_circle({"a": {"b"}, "b": set()}) == []


def test_ray_is_imported_only_by_the_cluster_layer():
    engine = PACKAGE / "engine"
    outside = [p for p in engine.rglob("*.py") if "ray" in imported_modules(p) and p.parent != engine / "cluster"]
    assert not outside
    for path in (PACKAGE / "addon").rglob("*.py"):
        assert "ray" not in imported_modules(path), path.name


def test_the_method_needs_no_diffusers():
    for path in sorted((PACKAGE / "engine" / "method").rglob("*.py")):
        assert not imported_modules(path) & (HEAVY - {"torch"}), path.name


def test_importing_the_package_loads_neither_bpy_nor_torch():
    code = "import sys, blender_unsample; print(sorted({'bpy', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_top_level_holds_exactly_the_planned_entries():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    top = {line.split("/")[0] for line in (tracked + untracked).splitlines() if line}
    assert top == {
        "blender_unsample", "wheels", "tests", "blender_manifest.toml", "build.py", "README.md",
        ".ci", "pyproject.toml", ".gitignore", "LICENSE", "BENCHMARKS.md", "RELIABILITY.md",
    }  # fmt: skip


def test_built_wheels_are_ignored_but_the_folder_is_kept():
    assert (ROOT / "wheels" / "README.md").exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", "wheels/torch-2.13.0-cp311-none-any.whl"], cwd=ROOT)
    assert ignored.returncode == 0


def test_license_file_matches_the_manifest():
    manifest = tomllib.loads((ROOT / "blender_manifest.toml").read_text(encoding="utf-8"))
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text
    assert manifest["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# What a family consists of, and so what adding one touches: its module in models/families/ (its
# behaviour as data: classes, configs, VAE, schedule, text encoders, how its files are told apart), a
# line in the registry, its rows in the shared facts (protocol.py: default models, native size, display
# name, menu tooltip) and its test-sized models. Its key is named there and nowhere else: the schedules,
# the loaders, the LoRA merger and the detector read the family modules, the add-on reads protocol.py.
FAMILY_PLACES = {"protocol.py", "tiny_models.py"}


def test_a_family_is_its_module_registered_and_named_nowhere_else():
    from blender_unsample.engine import protocol
    from blender_unsample.engine.models import families

    assert set(families.FAMILIES) == set(protocol.FAMILIES)
    engine = PACKAGE / "engine"
    registry = (engine / "models" / "families" / "registry.py").read_text(encoding="utf-8")
    for name, family in families.FAMILIES.items():
        module = engine / "models" / "families" / f"{name}.py"
        assert module.is_file(), f"{name} has no module of its own"
        assert type(family).__module__.endswith(".family") and family.name == name
        assert f"from .{name} import " in registry, f"{name} is not registered"
        named_in = {
            path.relative_to(engine).as_posix()
            for path in engine.rglob("*.py")
            if f'"{name}"' in path.read_text(encoding="utf-8") or f"'{name}'" in path.read_text(encoding="utf-8")
        }
        assert named_in == FAMILY_PLACES | {f"models/families/{name}.py"}, (
            f"{name} is named in {sorted(named_in)}: put what differs by family in its module"
        )
        in_addon = [path.name for path in (PACKAGE / "addon").rglob("*.py") if f'"{name}"' in path.read_text("utf-8")]
        assert not in_addon, f"the add-on names {name} in {in_addon}: read the family facts from protocol.py"
