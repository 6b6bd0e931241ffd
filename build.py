#!/usr/bin/env python3
"""Unsample's one task runner. Needs only a Python 3.11 to start; it sets up everything else.

    python3 build.py test [PYTEST ARGS]   every test: ruff, the engine, and the Blender side in
                                          Blender 5.0 and in Blender 4.2 LTS (set-up included)

Environments (made on first use, reused while their requirements are unchanged):
    .venv            Python 3.11: torch, diffusers, ..., bpy 5.0 (Blender as a module), pytest, ruff
    .venv-blender42  Python 3.11: bpy 4.2 LTS and pytest only; its tests start workers with .venv

UNSAMPLE_TEST_RUNS=engine,blender50,blender42 picks which of the three pytest runs `test` makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
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

    @property
    def python(self) -> Path:
        scripts = "Scripts" if os.name == "nt" else "bin"
        return self.folder / scripts / ("python.exe" if os.name == "nt" else "python")


MAIN_ENV = Environment(ROOT / ".venv", (*EXTRAS["engine"], *EXTRAS["test"]))
BLENDER42_ENV = Environment(ROOT / ".venv-blender42", tuple(EXTRAS["test-blender42"]))


def find_python311() -> str:
    """bpy wheels exist only for Python 3.11 (the Python Blender 4.2 to 5.0 bundle)."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    for name in ("python3.11", "python3"):
        found = shutil.which(name)
        if (
            found
            and subprocess.run([found, "-c", "import sys; assert sys.version_info[:2] == (3, 11)"]).returncode == 0
        ):
            return found
    sys.exit("build.py: Python 3.11 is needed (bpy, Blender as a module, exists only for it); none found on PATH")


def ensure_environment(env: Environment) -> Path:
    """Create the venv if missing and install its requirements if they changed since last time."""
    stamp = env.folder / "unsample-requirements.json"
    wanted = {"requirements": list(env.requirements), "digest": _digest(env.requirements)}
    if env.python.exists() and stamp.exists() and json.loads(stamp.read_text())["digest"] == wanted["digest"]:
        return env.python
    if not env.python.exists():
        print(f"build.py: creating {env.folder.name}", flush=True)
        run([find_python311(), "-m", "venv", str(env.folder)])
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


def test(args: list[str]) -> int:
    main_python = ensure_environment(MAIN_ENV)
    runs = os.environ.get("UNSAMPLE_TEST_RUNS", "engine,blender50,blender42").split(",")
    blender42_python = ensure_environment(BLENDER42_ENV) if "blender42" in runs else None

    run([str(main_python), "-m", "ruff", "check", "."], cwd=ROOT)
    run([str(main_python), "-m", "ruff", "format", "--check", "--quiet", "."], cwd=ROOT)

    paths = [a for a in args if (ROOT / a.split("::")[0]).exists() and not a.startswith("-")]
    options = [a for a in args if a not in paths]
    blender_paths = [p for p in paths if Path(p).parts[:2] == ("tests", "blender")]
    engine_paths = [p for p in paths if p not in blender_paths]
    env = dict(os.environ, HF_HUB_OFFLINE="1", UNSAMPLE_TEST_WORKER_PYTHON=str(main_python))

    plan = [
        ("engine", main_python, engine_paths or ["tests", "--ignore=tests/blender"]),
        ("blender50", main_python, blender_paths or ["tests/blender"]),
        ("blender42", blender42_python, blender_paths or ["tests/blender"]),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    exit_code = 0
    for name, python, targets in plan:
        if name not in runs or (paths and not (engine_paths if name == "engine" else blender_paths)):
            continue
        report = RESULTS / f"{name}.xml"
        report.unlink(missing_ok=True)
        print(f"\n=== pytest: {name} ===", flush=True)
        code = subprocess.run(
            [str(python), "-m", "pytest", *targets, *options, f"--junitxml={report}"], cwd=ROOT, env=env
        ).returncode
        if code not in (0, 5):  # 5: this run's selection matched no test
            exit_code = 1
        for key, value in _counts(report).items():
            totals[key] += value
    if totals["passed"] + totals["failed"] == 0:
        print("build.py: no test ran", file=sys.stderr)
        exit_code = exit_code or 1
    print(f"\ntests: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return exit_code


def _counts(report: Path) -> dict[str, int]:
    if not report.exists():
        return {}
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return {"passed": tests - skipped - failed, "failed": failed, "skipped": skipped}


COMMANDS = {"test": test}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
