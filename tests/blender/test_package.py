"""The packaged extension: `build.py wheels` and `build.py zip` on a copy of the repository, then the
zip installed and enabled by Blender's own extension system in a fresh Blender with its user folders
in a temporary directory. It runs in every Blender the suite runs in (4.2, 5.0, 5.3), each building,
validating and installing with its own extension tool. Offline: the bundled wheels are throwaway ones
written here: one pure-Python wheel, and one wheel per Blender Python (cp311 for 4.2-5.0, cp313 for
5.1+), as numpy's are, of which Blender must install only the one for its own Python.

Run as a script (`python test_package.py ZIP USER_DIR`), this file is that fresh Blender's side.
"""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import add_image_strip, strips_of, video_scene, worker_python, write_frames

ROOT = Path(__file__).resolve().parents[2]
PROBE = "unsample_probe"  # the throwaway package inside the bundled pure-Python wheel
PROBE_WHEEL = f"{PROBE}-1.0-py3-none-any.whl"
NATIVE = "unsample_native"  # one wheel per Python, like a compiled package's
NATIVE_WHEELS = {f"{NATIVE}-1.0-{tag}-{tag}-manylinux_2_17_x86_64.whl": tag for tag in ("cp311", "cp313")}
BLENDER_PYTHON = f"cp{sys.version_info.major}{sys.version_info.minor}"  # the Python of the Blender under test
MODULE = "bl_ext.user_default.unsample"  # the extension's package name once installed
USER_FOLDERS = ("CONFIG", "SCRIPTS", "DATAFILES", "EXTENSIONS")


# --- the test process: build and install ---------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_models) -> dict:
    """Copy the repository, fetch the wheels and build the zip there, then install it in a fresh Blender."""
    tmp = tmp_path_factory.mktemp("package")
    repo = copy_repository(tmp / "repo")
    (repo / "wheels" / "stale-0.1-py3-none-any.whl").write_bytes(b"from an earlier run")
    wheelhouse = tmp / "wheelhouse"
    write_wheel(wheelhouse / PROBE_WHEEL, PROBE, "VALUE = 42\n")
    for name, tag in NATIVE_WHEELS.items():
        write_wheel(wheelhouse / name, NATIVE, f"PYTHON = {tag!r}\n")
    build = [sys.executable, str(repo / "build.py")]
    fetch = ["wheels", "--wheelhouse", str(wheelhouse), "--platform", "linux-x64", "--lite"]
    run([*build, *fetch, "--requirements", f"{PROBE}==1.0", f"{NATIVE}==1.0"], repo)
    run([*build, "zip"], repo)
    zips = sorted((repo / "dist").glob("*.zip"))
    installed = install_in_fresh_blender(zips[0], tmp / "user", tiny_models) if len(zips) == 1 else {}
    return {"repo": repo, "zips": zips, "installed": installed, "user": tmp / "user"}


def copy_repository(target: Path) -> Path:
    """The working tree's files that git tracks or would track; the real checkout is never written to."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def write_wheel(path: Path, package: str, source: str) -> Path:
    """A minimal wheel holding one module, written by hand (no build tools, no network); its tags are
    the file name's."""
    name, version, python, abi, platform = path.stem.split("-")
    info = f"{name}-{version}.dist-info"
    pure = str(platform == "any").lower()
    files = {
        f"{package}/__init__.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test_package\nRoot-Is-Purelib: {pure}\n"
        f"Tag: {python}-{abi}-{platform}\n",
    }
    record = [f"{name},sha256={_digest(text)},{len(text.encode())}" for name, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def _digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def run(command: list[str], cwd: Path) -> None:
    # Blender's tool from the bpy under test, not a `blender` that happens to be on PATH.
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not shutil.which("blender", path=d))
    result = subprocess.run(command, cwd=cwd, env=dict(os.environ, PATH=path), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command[1:3])} failed:\n{result.stdout}\n{result.stderr}"


def install_in_fresh_blender(zip_path: Path, user: Path, models: dict[str, str]) -> dict:
    """This file as a script in a new process of this Python, with every Blender user folder in `user`."""
    # RESOURCES alone moves them all in 4.2 and 5.0; the others are set too because, if inherited,
    # they would win over it.
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(user))
    env.update({f"BLENDER_USER_{name}": str(user / name.lower()) for name in USER_FOLDERS})
    env.update(UNSAMPLE_TEST_MODELS=json.dumps(models), UNSAMPLE_TEST_WORKER_PYTHON=worker_python())
    command = [sys.executable, __file__, str(zip_path), str(user)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the tests -----------------------------------------------------------------------------------


def test_wheels_replaces_stale_wheels_and_lists_one_set_per_blender_python(package):
    repo = package["repo"]
    bundled = sorted([PROBE_WHEEL, *NATIVE_WHEELS])  # the pure-Python wheel once, for both Pythons
    assert sorted(p.name for p in (repo / "wheels").iterdir()) == sorted(["README.md", *bundled])
    manifest = tomllib.loads((repo / "blender_manifest.toml").read_text(encoding="utf-8"))
    assert manifest["wheels"] == [f"./wheels/{name}" for name in bundled]
    assert manifest["platforms"] == ["linux-x64"]
    assert manifest["id"] == "unsample"


def test_zip_holds_the_package_at_its_root_and_nothing_else(package):
    assert [z.name for z in package["zips"]] == ["unsample-0.1.0-linux_x64.zip"]
    names = set(zipfile.ZipFile(package["zips"][0]).namelist())
    assert {"__init__.py", "blender_manifest.toml", "LICENSE", f"wheels/{PROBE_WHEEL}"} <= names
    assert {f"wheels/{name}" for name in NATIVE_WHEELS} <= names  # one zip serves Blender 4.2 to 5.3
    assert "addon/ui/preferences.py" in names and "engine/protocol.py" in names
    assert "engine/job/pipeline.py" in names and "engine/requirements.txt" in names
    assert "engine/tiny_models.py" not in names  # a test fixture, not for users
    assert not {n for n in names if n.startswith(("tests/", "blender_unsample/", ".")) or "__pycache__" in n}
    assert not {n for n in names if n.endswith(".pyc")}


def test_the_real_checkout_is_untouched(package):
    assert not (ROOT / "wheels" / PROBE_WHEEL).exists()
    assert PROBE not in (ROOT / "blender_manifest.toml").read_text(encoding="utf-8")


def test_blender_installs_and_enables_the_zip_with_its_wheel(package):
    installed, user = package["installed"], str(package["user"])
    assert installed, "no single zip to install"
    assert all(path.startswith(user) for path in installed["user_folders"].values())
    assert installed["enabled"] == [True, True]
    assert installed["preferences"] == "UnsamplePreferences" and installed["preferences_registered"]
    assert installed["module_file"].startswith(os.path.join(user, "extensions", "user_default", "unsample"))
    assert installed["probe_value"] == 42 and installed["probe_file"].startswith(user)
    assert installed["native_python"] == BLENDER_PYTHON  # the wheel for this Blender's Python, not the other
    assert not installed["torch_imported"]


def test_the_installed_extension_restyles_a_strip(package):
    restyled = package["installed"]["restyled"]
    assert restyled["result"] == ["FINISHED"], Path(restyled["job_log"]).read_text() if restyled["job_log"] else ""
    assert restyled["added"] == [["Shots (Unsample)", 1, 4]]  # name, start, length (through JSON)


# --- the fresh Blender's side (this file run as a script) ----------------------------------------


def install_and_report(zip_path: str, user: str) -> dict:
    import bpy

    folders = {name: bpy.utils.user_resource(name) for name in USER_FOLDERS}
    if not all(path.startswith(user) for path in folders.values()):
        sys.exit(f"Blender's user folders are not redirected: {folders}")  # never touch the real ones
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    import addon_utils  # Blender's own module, on the path once bpy is imported

    preferences = bpy.context.preferences.addons[MODULE].preferences
    registered = bpy.types.AddonPreferences.bl_rna_get_subclass_py("UnsamplePreferences")
    probe = __import__(PROBE)
    native = __import__(NATIVE)

    restyled = restyle_with_the_installed_extension(preferences, Path(user))
    return {
        "user_folders": folders,
        "enabled": list(addon_utils.check(MODULE)),
        "preferences": type(preferences).__name__,
        "preferences_registered": bool(registered and registered.is_registered),
        "module_file": sys.modules[MODULE].__file__,
        "probe_value": probe.VALUE,
        "probe_file": probe.__file__,
        "native_python": native.PYTHON,
        "torch_imported": "torch" in sys.modules,
        "restyled": restyled,
    }


def restyle_with_the_installed_extension(preferences, user: Path) -> dict:
    """The Restyle operator of the installed extension on a tiny model, its worker started from there."""
    import bpy

    models = json.loads(os.environ["UNSAMPLE_TEST_MODELS"])
    preferences.worker_python = os.environ["UNSAMPLE_TEST_WORKER_PYTHON"]
    preferences.cache_folder = str(user / "cache")
    preferences.device = "cpu"
    scene = video_scene(bpy.context.scene)
    frames = write_frames(user / "frames", 4)
    add_image_strip(scene, "Shots", frames, 1, 1).select = True
    settings = scene.unsample
    settings.prompt = "an oil painting"
    settings.checkpoint = models["checkpoint"]
    settings.motion_module = models["motion_adapter"]
    settings.controlnet_model = models["controlnet"]
    settings.steps, settings.resolution, settings.width, settings.height = 2, "CUSTOM", 64, 40
    result = bpy.ops.sequencer.unsample_restyle()
    added = [s for s in strips_of(scene) if s.get("unsample_source") == "Shots"]
    return {
        "result": sorted(result),
        "added": [(s.name, s.frame_final_start, s.frame_final_duration) for s in added],
        "job_log": next((str(p) for p in (user / "cache").glob("jobs/*/runs/*/worker.log")), ""),
    }


if __name__ == "__main__":
    print(json.dumps(install_and_report(*sys.argv[1:3])), flush=True)
    # bpy 4.2 as a module can crash while Python finalizes after an add-on registered its classes
    # (seen with this one, even disabled again); Blender itself quits through its own exit path.
    # The report is out: leave without finalizing.
    os._exit(0)
