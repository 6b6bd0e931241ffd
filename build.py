#!/usr/bin/env python3
"""Unsample's one task runner. Needs Python 3.11 and 3.13 installed (and PyPI); it sets up everything else.

    python3 build.py demo [--tiny] [--out DIR]
                                          the main job: a generated clip restyled in headless Blender
                                          (--tiny: random-weight models, offline, a few CPU minutes)
    python3 build.py bench [--quick]      measure, and write BENCHMARKS.md (--quick: under ten minutes)
    python3 build.py bench --gpu [--dry-run] [--out DIR]
                                          the GPU check (tests/benchmarks/gpu_check.py; --dry-run: on the CPU)
    python3 build.py test [PYTEST ARGS]   every test: ruff, the engine, and the Blender side in
                                          Blender 5.0, 5.3 and 4.2 LTS (set-up included)
    python3 build.py wheels [OPTIONS]     fetch cp311 and cp313 wheels of the worker's dependencies
                                          (engine/requirements.txt) into wheels/, list them in the manifest
        --platform P [P ...]              windows-x64 linux-x64 macos-arm64 (default: all three)
        --torch-index URL                 take torch from that index too (e.g. a CUDA build's)
        --lite                            leave torch out: the worker Python set in the add-on's
                                          preferences brings its own
        --wheelhouse DIR                  offline: take every wheel from DIR, no index
        --requirements REQ [REQ ...]      fetch these instead of the `engine` extra (tests use it)
    python3 build.py zip                  build dist/unsample-VERSION-PLATFORM.zip per platform with
                                          Blender's own builder, and check each with its validator

Environments (made on first use, reused while their requirements are unchanged):
    .venv            Python 3.11: torch, diffusers, ..., bpy 5.0 (Blender as a module), pytest, ruff
    .venv-blender42  Python 3.11: bpy 4.2 LTS, pytest and the wheel tools; its tests start workers with .venv
    .venv-blender53  Python 3.13: bpy 5.3, pytest and the wheel tools; its tests start workers with .venv
Each is made with the Python its Blender bundles, found on PATH (python3.11, python3.13) or under pyenv.

UNSAMPLE_TEST_RUNS=engine,blender50,blender53,blender42 picks which of the pytest runs `test` makes.
`zip` uses a `blender` on PATH, else the copy of Blender's extension tool inside the bpy package of the
Python running build.py, else of .venv.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tomllib
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
RESULTS = ROOT / "build" / "test-results"


# --- environments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    folder: Path
    requirements: tuple[str, ...]
    python_version: str  # the Python it is made with: the one the Blender it stands for bundles

    @property
    def python(self) -> Path:
        scripts = "Scripts" if os.name == "nt" else "bin"
        return self.folder / scripts / ("python.exe" if os.name == "nt" else "python")


def read_requirements(path: Path) -> list[str]:
    """A requirements file's lines, without comments and blank lines (markers kept)."""
    lines = (line.split(" #", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


WORKER_REQUIREMENTS = ROOT / "blender_unsample" / "engine" / "requirements.txt"
ENGINE = read_requirements(WORKER_REQUIREMENTS)
# Ray, for `--cluster`: optional for users, always in the test environment (the cluster tests need it).
CLUSTER = read_requirements(WORKER_REQUIREMENTS.with_name("requirements-cluster.txt"))
MAIN_ENV = Environment(ROOT / ".venv", (*ENGINE, *CLUSTER, *EXTRAS["test"]), "3.11")
BLENDER42_ENV = Environment(ROOT / ".venv-blender42", tuple(EXTRAS["test-blender42"]), "3.11")
BLENDER53_ENV = Environment(ROOT / ".venv-blender53", tuple(EXTRAS["test-blender53"]), "3.13")
# Where build.py looks for a Python of a given version, after the one running it: PATH, then pyenv.
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def find_python(version: str) -> str:
    """A Python of ``version`` ("3.11"): this one, `pythonX.Y` or `python3` on PATH, or pyenv's."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    candidates = [shutil.which(f"python{version}"), shutil.which("python3")]
    candidates += [str(p) for p in sorted(PYENV_VERSIONS.glob(f"{version}.*/bin/python{version}"), reverse=True)]
    check = f"import sys; assert '%d.%d' % sys.version_info[:2] == {version!r}"
    for found in filter(None, candidates):
        if subprocess.run([found, "-c", check], capture_output=True).returncode == 0:
            return found
    sys.exit(
        f"build.py: Python {version} is needed (Blender's own Python: 3.11 in Blender 4.2-5.0, 3.13 in 5.1-5.3) "
        f"and none was found on PATH (python{version}) or under {PYENV_VERSIONS}. Install it, e.g. "
        f"`pyenv install {version}` or your system's python{version} package, and run build.py again."
    )


def ensure_environment(env: Environment) -> Path:
    """Create the venv if missing and install its requirements if they changed since last time."""
    stamp = env.folder / "unsample-requirements.json"
    wanted = {"requirements": list(env.requirements), "digest": _digest(env.requirements)}
    if env.python.exists() and stamp.exists() and json.loads(stamp.read_text())["digest"] == wanted["digest"]:
        return env.python
    if not env.python.exists():
        print(f"build.py: creating {env.folder.name}", flush=True)
        run([find_python(env.python_version), "-m", "venv", str(env.folder)])
    pip = [str(env.python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # torch goes first and alone: pinned, it takes the CPU wheel on this machine's disk instead of
    # letting another package pull a multi-GB CUDA build.
    torch_pins = [r for r in env.requirements if r.startswith("torch==")]
    if torch_pins:
        run([*pip, *torch_pins])
    run([*pip, *env.requirements])
    stamp.write_text(json.dumps(wanted, indent=2))
    return env.python


def _digest(requirements: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(requirements).encode()).hexdigest()


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0:
        sys.exit(f"build.py: command failed ({result.returncode}): {' '.join(command)}")
    return result


# --- test ----------------------------------------------------------------------------------------

# The pytest runs `test` makes, in order, with what each runs by default. Blender 5.0 (the newest on
# Python 3.11, in .venv with torch) and 5.3 (the newest, Python 3.13) run the whole Blender suite.
# 4.2 LTS, the oldest, runs what touches the API that differs before 4.4 (`Sequence`, `sequences`,
# actions without layers: addon/compat.py): registration, the installed zip, every kind of strip
# restyled, the export process, edits and keyframes noticed mid-job, and every panel drawn.
BLENDER = "tests/blender"
TEST_RUNS: dict[str, tuple[str, ...]] = {
    "engine": ("tests", f"--ignore={BLENDER}"),
    "blender50": (BLENDER,),
    "blender53": (BLENDER,),
    "blender42": (
        f"{BLENDER}/test_registration.py",
        f"{BLENDER}/test_package.py",
        f"{BLENDER}/test_restyle.py",
        f"{BLENDER}/test_export_process.py::test_the_exported_frames_follow_the_strip_wherever_the_playhead_is",
        f"{BLENDER}/test_reliability.py::test_a_strip_edited_during_its_job_gets_its_result_with_a_warning",
        f"{BLENDER}/test_reliability.py::test_a_changed_keyframe_is_an_edit",
        f"{BLENDER}/test_prompts.py::test_every_panel_draws_without_errors",
        f"{BLENDER}/test_worker_missing.py",
        f"{BLENDER}/test_timeline_export.py",
        f"{BLENDER}/test_timeline_jobs.py",
        f"{BLENDER}/test_cluster.py::test_an_unusable_cluster_address_greys_restyle_and_check_cluster_with_the_reason",
        f"{BLENDER}/test_cluster.py::test_a_batch_on_the_cluster_runs_on_one_worker_and_each_strip_is_added_as_it_lands",
    ),
}


def test(args: list[str]) -> int:
    main_python = ensure_environment(MAIN_ENV)
    runs = os.environ.get("UNSAMPLE_TEST_RUNS", ",".join(TEST_RUNS)).split(",")
    if unknown := set(runs) - set(TEST_RUNS):
        sys.exit(f"build.py: no test run named {', '.join(sorted(unknown))}; the runs are {', '.join(TEST_RUNS)}")
    pythons = {"engine": main_python, "blender50": main_python}
    for name, env in (("blender42", BLENDER42_ENV), ("blender53", BLENDER53_ENV)):
        if name in runs:
            pythons[name] = ensure_environment(env)

    run([str(main_python), "-m", "ruff", "check", "."], cwd=ROOT)
    run([str(main_python), "-m", "ruff", "format", "--check", "--quiet", "."], cwd=ROOT)

    paths = [a for a in args if (ROOT / a.split("::")[0]).exists() and not a.startswith("-")]
    options = [a for a in args if a not in paths]
    blender_paths = [p for p in paths if Path(p).parts[:2] == Path(BLENDER).parts]
    engine_paths = [p for p in paths if p not in blender_paths]
    env = dict(os.environ, HF_HUB_OFFLINE="1", UNSAMPLE_TEST_WORKER_PYTHON=str(main_python))

    plan = [
        (name, (engine_paths if name == "engine" else blender_paths) or list(targets))
        for name, targets in TEST_RUNS.items()
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    exit_code = 0
    for name, targets in plan:
        python = pythons.get(name)
        if name not in runs or (paths and not (engine_paths if name == "engine" else blender_paths)):
            continue
        report = RESULTS / f"{name}.xml"
        report.unlink(missing_ok=True)
        print(f"\n=== pytest: {name} ===", flush=True)
        code = subprocess.run(
            [str(python), "-m", "pytest", *targets, *options, f"--junitxml={report}"], cwd=ROOT, env=env
        ).returncode
        if code not in (0, 5):  # 5: this run's selection matched no test
            print(f"build.py: pytest ({name}) ended with {_exit_reason(code)}", file=sys.stderr, flush=True)
            exit_code = 1
        for key, value in _counts(report).items():
            totals[key] += value
    if totals["passed"] + totals["failed"] == 0:
        print("build.py: no test ran", file=sys.stderr)
        exit_code = exit_code or 1
    print(f"\ntests: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return exit_code


def _exit_reason(code: int) -> str:
    """Why a pytest process failed, said so a CI log tells a crash from failing tests."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return f"signal {name}: the process died, which no test report counts"


def _counts(report: Path) -> dict[str, int]:
    if not report.exists():
        return {}
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return {"passed": tests - skipped - failed, "failed": failed, "skipped": skipped}


# --- wheels: the worker's dependencies, bundled ---------------------------------------------------

MANIFEST = ROOT / "blender_manifest.toml"
WHEELS = ROOT / "wheels"
# What `wheels` runs with, besides pip: uv resolves for another platform and Python with that target's
# markers, packaging parses requirements, tomlkit rewrites the manifest keeping its comments. All are in
# every test environment; from another Python, `wheels` runs itself again with .venv's.
WHEEL_TOOLS = ("uv", "packaging", "tomlkit")


@dataclass(frozen=True)
class Platform:
    """A platform Blender runs on: uv's name for it when resolving, and pip's tags for the wheels that
    run there when downloading."""

    uv_platform: str
    pip_tags: tuple[str, ...]
    environment: tuple[tuple[str, str], ...] = ()  # what uv's resolution for it also needs set


# The Pythons Blender bundles: 3.11 in 4.2 LTS to 5.0, 3.13 from 5.1. Each zip carries wheels for both;
# Blender installs those whose tags fit its own Python (pure-Python and abi3 wheels serve both, once).
BLENDER_PYTHONS = ("3.11", "3.13")
# Blender 4.2 to 5.3 on Linux need glibc 2.28, so every manylinux wheel from 2.17 (manylinux2014) up
# to 2.28 runs there; pip does not widen manylinux_2_X tags by itself, hence the list (manylinux2014
# it widens to 2010 and 1). macOS tags it does widen, down to 11.0 and to universal2 wheels. Blender
# runs on macOS 11.2, but torch 2.13's only macOS wheel is tagged 14.0: the macOS zip needs Sonoma.
MANYLINUX_X64 = (*(f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)), "manylinux2014_x86_64")
PLATFORMS = {
    "windows-x64": Platform("x86_64-pc-windows-msvc", ("win_amd64",)),
    "linux-x64": Platform("x86_64-manylinux_2_28", MANYLINUX_X64),
    "macos-arm64": Platform("aarch64-apple-darwin", ("macosx_14_0_arm64",), (("MACOSX_DEPLOYMENT_TARGET", "14.0"),)),
}
LEFT_OUT_WHEN_LITE = ("torch",)


def wheels(args: list[str]) -> int:
    if not all(importlib.util.find_spec(tool) for tool in WHEEL_TOOLS):
        python = ensure_environment(MAIN_ENV)
        return subprocess.run([str(python), str(Path(__file__).resolve()), "wheels", *args]).returncode
    options = _wheels_parser().parse_args(args)
    options.platform = list(dict.fromkeys(options.platform))
    requirements = options.requirements or list(ENGINE)
    if options.lite:
        requirements = [r for r in requirements if _name(r) not in LEFT_OUT_WHEN_LITE]
    scratch = ROOT / "build" / "wheels-download"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    # Left out for real: dropped from the resolution, with whatever only they need (a marker that never
    # holds is uv's way to remove a dependency), not merely left out of the download.
    left_out = LEFT_OUT_WHEN_LITE if options.lite else ()
    (scratch / "overrides.txt").write_text("".join(f"{name}; sys_platform == 'never'\n" for name in left_out))
    # Pins stay exact on every platform. A pin such as torch==2.13.0 also matches builds named
    # 2.13.0+cu128 or +cpu (a pin without a local label ignores it), which is how PyTorch's own indexes
    # name theirs, and a wheel needing a newer OS is taken through the platform's tags (torch's macOS
    # 14.0 one). Where a pinned version has no wheel for a platform at all, this stops and names the
    # platform rather than falling back to another version: a version the tests never ran would ship.
    for platform in options.platform:
        for python in BLENDER_PYTHONS:
            pins = _resolve(platform, python, options, scratch)
            _download(platform, python, pins, options, scratch / "wheels")
            print(f"build.py: {platform}, Python {python}: {len(pins)} wheels", flush=True)
    names = _replace_wheels(sorted((scratch / "wheels").glob("*.whl")))
    write_manifest_lists(options.platform, names)
    shutil.rmtree(scratch)
    print(f"build.py: {len(names)} wheels in wheels/, listed in {MANIFEST.name} for {', '.join(options.platform)}")
    return 0


def _wheels_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build.py wheels", description="Fetch the worker's wheels into wheels/.")
    parser.add_argument("--platform", nargs="+", choices=PLATFORMS, default=list(PLATFORMS))
    parser.add_argument("--torch-index", metavar="URL", help="an index to take torch from (e.g. a CUDA build's)")
    parser.add_argument("--lite", action="store_true", help="leave torch out: the worker Python brings its own")
    parser.add_argument("--wheelhouse", metavar="DIR", type=Path, help="offline: take wheels only from DIR")
    parser.add_argument("--requirements", nargs="+", metavar="REQ", help="instead of engine/requirements.txt")
    return parser


def _sources(options: argparse.Namespace) -> list[str]:
    """Where uv and pip look for packages; the same options mean the same to both."""
    if options.wheelhouse and options.torch_index:
        sys.exit("build.py wheels: --wheelhouse works offline, --torch-index needs an index: pick one")
    if options.lite and options.torch_index:
        sys.exit("build.py wheels: --lite leaves torch out, so --torch-index has nothing to fetch")
    if options.wheelhouse:
        return ["--no-index", "--find-links", str(options.wheelhouse.resolve())]
    # An extra index, not the only one: torch's CUDA builds (2.13.0+cu128) outrank PyPI's 2.13.0 where
    # the index has one for the platform, and PyPI still serves the rest (and torch for macOS).
    return ["--extra-index-url", options.torch_index] if options.torch_index else []


def _resolve(platform: str, python: str, options: argparse.Namespace, scratch: Path) -> list[str]:
    """Exact pins of every wheel Blender's Python ``python`` needs on ``platform``, resolved by uv with
    that target's markers (a Windows-only dependency for Windows, none of Linux's CUDA libraries there)."""
    target = PLATFORMS[platform]
    lock = scratch / f"pylock.{platform}-{python.replace('.', '')}.toml"
    command = [sys.executable, "-m", "uv", "pip", "compile", str(scratch / "requirements.txt"), "--quiet"]
    command += ["--python-platform", target.uv_platform, "--python-version", python, "--only-binary", ":all:"]
    command += ["--override", str(scratch / "overrides.txt"), "--no-header", "--output-file", str(lock)]
    sources = _sources(options)
    if options.torch_index:
        # uv takes a package only from the first index that has it; torch's index also carries old
        # numpy and pillow builds, so let every index offer every package, as pip does.
        sources += ["--index-strategy", "unsafe-best-match"]
    if subprocess.run([*command, *sources], env=dict(os.environ, **dict(target.environment))).returncode != 0:
        sys.exit(
            f"build.py wheels: no set of wheels for Python {python} on {platform} (uv's message is above). If a"
            " pinned version has no wheel there, leave the platform out (--platform) or change the pin (with a"
            f" python_version marker where the two Pythons need different ones) in {WORKER_REQUIREMENTS.name}"
        )
    packages = tomllib.loads(lock.read_text(encoding="utf-8")).get("packages", [])
    return [f"{package['name']}=={package['version']}" for package in packages]


def _download(platform: str, python: str, pins: list[str], options: argparse.Namespace, folder: Path) -> None:
    """The wheels of exact pins, for the target's tags; nothing is resolved here (``--no-deps``), so no
    marker is read against the Python that runs pip. A wheel both Pythons use is fetched once."""
    cp = "cp" + python.replace(".", "")
    tags = [f"--platform={tag}" for tag in PLATFORMS[platform].pip_tags]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    command += ["--only-binary=:all:", f"--python-version={python}", "--implementation=cp", f"--abi={cp}", *tags]
    if subprocess.run([*command, *_sources(options), "--dest", str(folder), *pins]).returncode != 0:
        sys.exit(f"build.py wheels: pip could not download the {cp} wheels for {platform} (its message is above)")


def _name(requirement: str) -> str:
    """The normalised project name of a requirement (PEP 503)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement as error:
        sys.exit(f"build.py: not a requirement: {requirement!r} ({error})")


def _replace_wheels(downloaded: list[Path]) -> list[str]:
    """Swap the wheels of earlier runs for the new ones; wheels/README.md stays."""
    for stale in WHEELS.glob("*.whl"):
        stale.unlink()
    for wheel in downloaded:
        wheel.replace(WHEELS / wheel.name)
    return [wheel.name for wheel in downloaded]


def write_manifest_lists(platforms: list[str], wheel_names: list[str]) -> None:
    """Set the manifest's `platforms` and `wheels`, keeping its comments and layout (tomlkit).

    `platforms` follows the wheels: a zip for a platform whose wheels were not fetched would install
    and then fail in the worker. No wheels: no `wheels` key."""
    import tomlkit

    manifest = tomlkit.parse(MANIFEST.read_text(encoding="utf-8"))
    manifest["platforms"] = platforms
    if wheel_names:
        listed = tomlkit.array()
        listed.extend(f"./wheels/{name}" for name in wheel_names)
        manifest["wheels"] = listed.multiline(True)
    else:
        manifest.pop("wheels", None)
    MANIFEST.write_text(tomlkit.dumps(manifest), encoding="utf-8")


# --- zip: the extension, built and checked by Blender's own tool -----------------------------------

STAGE = ROOT / "build" / "extension"
DIST = ROOT / "dist"
EXTENSION_TOOL = "scripts/addons_core/bl_pkg/cli/blender_ext.py"


@dataclass(frozen=True)
class ExtensionTool:
    command: tuple[str, ...]  # up to the sub-command
    options: tuple[str, ...] = ()  # after it: the script alone does not know Blender's list of valid tags

    def __call__(self, subcommand: str, *args: str) -> list[str]:
        return [*self.command, subcommand, *self.options, *args]


def build_zip(args: list[str]) -> int:
    if args:
        sys.exit("build.py zip: takes no arguments")
    tool = extension_tool()
    manifest = stage_extension()
    DIST.mkdir(exist_ok=True)
    for old in DIST.glob(f"{manifest['id']}-*.zip"):
        old.unlink()
    run(tool("build", "--source-dir", str(STAGE), "--output-dir", str(DIST), "--split-platforms"))
    zips = sorted(DIST.glob(f"{manifest['id']}-{manifest['version']}-*.zip"))
    for path in zips:
        run(tool("validate", str(path)))
    if not manifest.get("wheels"):
        print("build.py: no wheels bundled: the worker needs a Python with torch and diffusers (build.py wheels)")
    print("build.py: built and validated " + ", ".join(str(path.relative_to(ROOT)) for path in zips))
    return 0


def stage_extension() -> dict:
    """build/extension/: the add-on package's contents at the top, next to the manifest, LICENSE and the
    wheels the manifest lists; Blender's builder zips that folder as it is."""
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    shutil.rmtree(STAGE, ignore_errors=True)
    shutil.copytree(ROOT / "blender_unsample", STAGE, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
    for name in (MANIFEST.name, "LICENSE"):
        shutil.copy2(ROOT / name, STAGE / name)
    (STAGE / "wheels").mkdir()
    for listed in manifest.get("wheels", []):
        source = ROOT / listed
        if not source.is_file():
            sys.exit(f"build.py zip: {listed} is listed in {MANIFEST.name} but missing: run build.py wheels")
        _link_or_copy(source, STAGE / listed)
    return manifest


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link spares copying gigabytes of torch; it needs the same file system.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def extension_tool() -> ExtensionTool:
    """Blender's `extension` command line: a Blender on PATH, else the script in a bpy package."""
    if blender := shutil.which("blender"):
        return ExtensionTool((blender, "--factory-startup", "--command", "extension"))
    if importlib.util.find_spec("bpy"):
        python, sites = sys.executable, [Path(sysconfig.get_path("platlib"))]
    else:
        python = str(ensure_environment(MAIN_ENV))
        sites = [*MAIN_ENV.folder.glob("lib/python3.*/site-packages"), MAIN_ENV.folder / "Lib" / "site-packages"]
    scripts = sorted(script for site in sites for script in site.glob(f"bpy/*/{EXTENSION_TOOL}"))
    if not scripts:
        sys.exit(f"build.py zip: no `blender` on PATH and no {EXTENSION_TOOL} in {python}'s bpy package")
    tags = scripts[-1].parents[3] / "modules" / "_bpy_internal" / "extensions" / "tags.py"
    return ExtensionTool((python, str(scripts[-1])), (f"--valid-tags={tags}",))


# --- demo: the main job, end to end -------------------------------------------------------------------

DEMO_SCRIPT = ROOT / "tests" / "demo" / "demo_in_blender.py"
HUB = ("huggingface.co", 443)


def demo(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="build.py demo", description="Restyle a generated clip in headless Blender.")
    parser.add_argument("--tiny", action="store_true", help="random-weight tiny models: offline, a few CPU minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "demo_out", help="output folder (default: demo_out/)")
    options = parser.parse_args(args)
    if not options.tiny and not _reachable(HUB):
        sys.exit(
            "build.py demo: the default models come from the Hugging Face Hub, which is out of reach from here.\n"
            "Run `python3 build.py demo --tiny` for the offline demo on random-weight tiny models."
        )
    python = ensure_environment(MAIN_ENV)
    command = [str(python), str(DEMO_SCRIPT), "--out", str(options.out.resolve())]
    env = dict(os.environ, HF_HUB_OFFLINE="1") if options.tiny else dict(os.environ)
    return subprocess.run([*command, *(["--tiny"] if options.tiny else [])], cwd=ROOT, env=env).returncode


def _reachable(address: tuple[str, int]) -> bool:
    import socket

    try:
        with socket.create_connection(address, timeout=5):
            return True
    except OSError:
        return False


# --- bench: measurements written to BENCHMARKS.md --------------------------------------------------


def bench(args: list[str]) -> int:
    python = ensure_environment(MAIN_ENV)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    gpu = "--gpu" in args
    script = ROOT / "tests" / "benchmarks" / ("gpu_check.py" if gpu else "run.py")
    args = [arg for arg in args if arg != "--gpu"]
    return subprocess.run([str(python), str(script), *args], cwd=ROOT, env=env).returncode


COMMANDS = {"test": test, "wheels": wheels, "zip": build_zip, "demo": demo, "bench": bench}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
