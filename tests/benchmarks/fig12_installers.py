"""Figure 12: why Set Up Worker installs with uv: pip against uv on the same wheels, offline.

The worker's requirements are installed from the tests' local wheelhouse (build/test-wheelhouse/<key>/,
the folder tests/blender/test_setup_worker.py downloads once and keys by the requirements and uv's
version; made the same way here, with ``pip download``, where it is missing) into a fresh virtual
environment of this Python, three ways, in rounds:

* pip (the one ``venv`` puts in the environment): ``pip install --no-index --find-links WHEELHOUSE -r REQ``;
* uv, empty cache: ``pip install uv`` from the wheelhouse, then ``uv pip install`` with Set Up Worker's
  arguments (``--cache-dir`` an empty folder, ``--no-progress``, the wheelhouse as its index);
* uv, warm cache: the same, in another fresh environment, with the cache the previous run filled.

Making the environment itself is timed apart and counted in no row. Quick mode installs the requirements
without torch and the two packages that need it (accelerate, peft): the same kind of work on 50 MB of
wheels instead of 270 MB.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from jobs import ROOT
from report import REPEATS, Figure, spread, summary

REQUIREMENTS = ROOT / "blender_unsample" / "engine" / "requirements.txt"
WORKER_SETUP = ROOT / "blender_unsample" / "addon" / "worker" / "environment.py"
NEED_TORCH = {"torch", "accelerate", "peft"}  # left out in quick mode: accelerate and peft require torch
INSTALLERS = ("pip", "uv, empty cache", "uv, warm cache")


def uv_version() -> str:
    """Set Up Worker's pinned uv, read from its source (importing the add-on would import bpy)."""
    for node in ast.parse(WORKER_SETUP.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "UV_VERSION" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"no UV_VERSION in {WORKER_SETUP}")


def wheelhouse(uv: str) -> tuple[Path, bool]:
    """The tests' wheelhouse (keyed as their fixture keys it), made if missing; and whether it was."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + f"\nuv=={uv}".encode()).hexdigest()[:12]
    folder = ROOT / "build" / "test-wheelhouse" / key
    if folder.is_dir():
        return folder, False
    partial = folder.with_name(f"{key}.partial-{os.getpid()}")
    command = [sys.executable, "-m", "pip", "download", "-q", "-d", str(partial), "-r", str(REQUIREMENTS)]
    subprocess.run([*command, f"uv=={uv}"], check=True)
    partial.rename(folder)  # whole or not at all, as the fixture does
    return folder, True


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~;\s\[]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def requirements(quick: bool, scratch: Path) -> Path:
    if not quick:
        return REQUIREMENTS
    lines = [line for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in lines if line.lstrip().startswith("#") or _name(line) not in NEED_TORCH]
    path = scratch / "requirements-quick.txt"
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return path


def _run(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ...: exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    return seconds


def _env_python(env: Path) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")


def _installed(env: Path) -> list[str]:
    """Distribution names in the environment, pip and uv (the installers themselves) left out."""
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    names = [p.name.split("-")[0].lower().replace("_", "-") for p in purelib.glob("*.dist-info")]
    return sorted(n for n in names if n not in {"pip", "uv"})


def install(how: str, env: Path, wheels: Path, req: Path, cache: Path, uv: str) -> dict[str, Any]:
    """One install into a fresh environment at ``env``: its seconds (the environment's making apart)."""
    shutil.rmtree(env, ignore_errors=True)
    run: dict[str, Any] = {"installer": how, "venv": _run([sys.executable, "-m", "venv", str(env)])}
    python = str(_env_python(env))
    offline = ["--no-index", "--find-links", str(wheels)]
    if how == "pip":
        run["install"] = _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *offline,
                               "-r", str(req)])  # fmt: skip
        run["bootstrap"] = 0.0
    else:
        if how == "uv, empty cache":
            shutil.rmtree(cache, ignore_errors=True)
        run["bootstrap"] = _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *offline,
                                 f"uv=={uv}"])  # fmt: skip
        uv_binary = str(Path(python).parent / "uv")
        run["install"] = _run([uv_binary, "pip", "install", "--python", python, "--cache-dir", str(cache),
                               "--no-progress", *offline, "-r", str(req)])  # fmt: skip
    run["total"] = run["bootstrap"] + run["install"]
    installer = [python, "-m", "pip"] if how == "pip" else [str(Path(python).parent / "uv")]
    run["version"] = subprocess.run([*installer, "--version"], capture_output=True, text=True).stdout.split()[1]
    run["packages"] = _installed(env)
    return run


def measure(quick: bool, scratch: Path) -> Figure:
    uv = uv_version()
    wheels, made = wheelhouse(uv)
    req = requirements(quick, scratch)
    for wheel in wheels.glob("*.whl"):  # read once, untimed: every run then reads them from the page cache
        wheel.read_bytes()
    env, cache = scratch / "env", scratch / "uv-cache"
    rounds = REPEATS if quick else 5
    runs: list[dict[str, Any]] = []
    for number in range(rounds):
        # uv's warm run follows its cold one (it reuses that cache); pip goes first and last in turn.
        order = INSTALLERS if number % 2 == 0 else INSTALLERS[1:] + INSTALLERS[:1]
        for how in order:
            runs.append(install(how, env, wheels, req, cache, uv) | {"round": number})
    shutil.rmtree(env, ignore_errors=True)
    versions = {how: sorted({r["version"] for r in runs if r["installer"] == how}) for how in INSTALLERS}
    packages = runs[0]["packages"]
    sizes = {p: sum(w.stat().st_size for w in wheels.glob("*.whl") if _wheel_name(w) == p) for p in packages}
    wheel_mb = sum(sizes.values()) / 1e6
    by = {how: [r for r in runs if r["installer"] == how] for how in INSTALLERS}
    same = all(r["packages"] == packages for r in runs)
    labels = {
        "pip": f"pip {', '.join(versions['pip'])}",
        "uv, empty cache": f"uv {', '.join(versions['uv, empty cache'])}, empty cache",
        "uv, warm cache": f"uv {', '.join(versions['uv, warm cache'])}, its cache filled by the run before",
    }
    rows = []
    for how, these in by.items():
        pip_over = [
            p["total"] / r["total"] for p, r in zip(by["pip"], these, strict=True)
        ]  # within each round: the same load on both
        rows.append([labels[how], spread([r["install"] for r in these], ".1f"),
                     spread([r["bootstrap"] for r in these], ".1f") if how != "pip" else "",
                     spread([r["total"] for r in these], ".1f"),
                     "1" if how == "pip" else spread(pip_over, ".1f", "x")])  # fmt: skip
    cold = [p["total"] / c["total"] for p, c in zip(by["pip"], by["uv, empty cache"], strict=True)]
    warm = [p["total"] / w["total"] for p, w in zip(by["pip"], by["uv, warm cache"], strict=True)]
    left_out = ", ".join(sorted(NEED_TORCH))
    what = f"the worker's requirements without {left_out}" if quick else "the worker's requirements"
    return Figure(
        number=12,
        title="Installing the worker's packages: pip against uv",
        question=(
            f"How long does Set Up Worker's install take with uv rather than pip? {what.capitalize()} "
            f"({len(packages)} packages, {wheel_mb:.0f} MB of wheels) from the same local wheelhouse into a fresh "
            f"virtual environment of Python {sys.version.split()[0]}, offline; {rounds} rounds, seconds as median "
            "(min–max)."
        ),
        headers=["installer", "install s", "`pip install uv` s", "total s", "pip's total over this one's, per round"],
        rows=rows,
        verdict=(
            f"on this machine: uv with an empty cache {spread(cold, '.1f', 'x')} faster than pip, with a warm "
            f"cache {spread(warm, '.1f', 'x')}"
        ),
        notes=[
            f"Wheelhouse: {wheels.relative_to(ROOT)} ({'made by this run with pip download' if made else 'reused'}), "
            "the folder tests/blender/test_setup_worker.py makes; every index is off (--no-index), so nothing is "
            "downloaded during the runs. Its files are read once before the first run, so that every run finds "
            "them in the page cache.",
            "uv's arguments are Set Up Worker's with a wheelhouse as the Package Index (addon/worker/environment.py): "
            "`uv pip install --python ENV --cache-dir CACHE --no-progress --no-index --find-links WHEELHOUSE -r "
            "REQ`. uv's cache and the environment are on one file system, so uv hard-links from its cache as in "
            "Set Up Worker. Making the environment (`python -m venv`, "
            f"{spread([r['venv'] for r in runs], '.1f')} s) is in no row.",
            "Each round: pip, then uv with an empty cache, then uv with the cache that run filled; pip goes "
            "last instead in every other round. Ratios are taken within each round."
            + ("" if same else " WARNING: the runs did not all install the same packages (see results.json)."),
            "Versions as each environment's installer reports them (`pip --version`, `uv --version`): pip is the "
            "one venv puts in a new environment of this Python, uv the one Set Up Worker pins.",
        ]
        + ([f"Quick mode: {left_out} are left out (the full run installs all of them)."] if quick else []),
        raw={
            "wheelhouse": str(wheels.relative_to(ROOT)),
            "wheelhouse_made": made,
            "requirements": req.read_text(encoding="utf-8"),
            "packages": packages,
            "wheel_bytes": sizes,
            "runs": runs,
            "pip_over_uv_cold": summary(cold),
            "pip_over_uv_warm": summary(warm),
        },
    )


def _wheel_name(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower().replace("_", "-")
