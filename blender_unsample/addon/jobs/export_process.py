"""Render a strip's frames in a second Blender, in the background, so that the user's Blender never
waits for a render: its main thread only writes the scene to a file and counts finished frames.

The user's Blender writes the scene, with everything it uses, to ``export.blend`` in the job
folder. The second Blender opens that file and runs :class:`FrameExporter` there, one frame after
another. It is Blender's own executable in background mode or, where Blender is the ``bpy``
Python module (scripts, tests), the same Python. It stops when the user's Blender goes away.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import bpy

from ...engine.errors import disk_full_text

PACKAGE_DIR = Path(__file__).resolve().parents[2]
FAILURE = "unsample-export-error: "  # how the export process names what went wrong, on its last line
PARTIAL = ".partial-frame_*.png"  # a frame being written (see FrameExporter.step)
# How the operating system says "disk full": Blender's own errors carry only the text.
DISK_FULL_TEXTS = ("No space left on device", "There is not enough space on the disk")


class JobError(Exception):
    """A job failed for a reason its message already explains to the user."""


def is_disk_full(error: BaseException) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC or any(text in str(error) for text in DISK_FULL_TEXTS)


def failure_text(error: BaseException) -> str:
    """An unexpected error for the user: a full disk in the engine's words, else its type and text."""
    if is_disk_full(error):
        return disk_full_message(getattr(error, "filename", None))
    return f"{type(error).__name__}: {error}"


def disk_full_message(path: str | Path | None) -> str:
    """The engine's words for a full disk, with its error code, for a file written on this side."""
    return f"{disk_full_text(path)} [disk_full]"


# Makes the package folder importable as "unsample_export" without running its __init__ files
# (they would import the whole add-on; engine.errors, used here, needs only the standard library),
# then runs main() below.
_BOOTSTRAP = """
import sys, types
args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
for part in ("", ".addon", ".addon.jobs", ".engine"):
    package = types.ModuleType("unsample_export" + part)
    package.__path__ = [args[0] + part.replace(".", "/")]
    sys.modules[package.__name__] = package
from unsample_export.addon.jobs.export_process import main
main(args[1])
"""


def export_command(job_file: Path) -> list[str]:
    """The command line of the export process for ``job_file``."""
    args = [str(PACKAGE_DIR), str(job_file)]
    if bpy.app.binary_path:  # the Blender application
        # Scripts in the file (Python drivers of a scene strip's scene) run there only if they run here.
        trusted = bpy.context.preferences.filepaths.use_scripts_auto_execute and not bpy.app.autoexec_fail
        return [
            bpy.app.binary_path, "--background", "--factory-startup", "--python-exit-code", "1",
            "--enable-autoexec" if trusted else "--disable-autoexec", "--python-expr", _BOOTSTRAP, "--", *args,
        ]  # fmt: skip
    return [sys.executable, "-c", _BOOTSTRAP, *args]  # Blender as a Python module


class ExportProcess:
    """Exports frames ``frames`` (scene frame numbers) of ``strip`` to ``folder`` as numbered PNGs,
    in another process; :meth:`poll` only looks at how far it got."""

    def __init__(
        self,
        scene: bpy.types.Scene,
        strip: bpy.types.Sequence,
        frames: range,
        folder: Path,
        size: tuple[int, int],
    ) -> None:
        self.frames = frames
        self.folder = folder
        self.paths: list[Path] = []
        self.process: subprocess.Popen | None = None
        run_dir = folder.parent
        self._blend = run_dir / "export.blend"
        # Blender's session temporary folder (blender_*) goes here: a killed Blender leaves it behind.
        self._tmp = run_dir / "tmp"
        self.log_path = run_dir / "export.log"
        folder.mkdir(parents=True, exist_ok=True)
        self._remove_partial_frames()
        for stale in folder.glob("frame_*.png"):  # from an earlier, unfinished export
            stale.unlink()
        try:
            job_file = self._write_job(scene, strip, size)
            self._start(job_file)
        except BaseException:
            self.close()
            raise

    def _write_job(self, scene: bpy.types.Scene, strip: bpy.types.Sequence, size: tuple[int, int]) -> Path:
        run_dir = self.folder.parent
        job_file = run_dir / "export.json"
        job = {
            "blend": str(self._blend), "scene": scene.name, "strip": strip.name, "folder": str(self.folder),
            "frames": [self.frames.start, self.frames.stop, self.frames.step], "size": list(size),
        }  # fmt: skip
        try:
            # The scene and what it uses (clips, sounds, scenes of scene strips, fonts), with absolute
            # paths: the file lives in the job folder, not beside the user's .blend. Unsaved edits too.
            bpy.data.libraries.write(str(self._blend), {scene}, path_remap="ABSOLUTE", fake_user=True)
            job_file.write_text(json.dumps(job, indent=2), encoding="utf-8")
            self._tmp.mkdir(exist_ok=True)
        except OSError as error:
            if is_disk_full(error):
                raise JobError(f"cannot export the strip's frames: {disk_full_message(self._blend)}") from error
            raise JobError(f"cannot export the strip's frames: {str(error).strip()}") from error
        return job_file

    def _start(self, job_file: Path) -> None:
        temporary = str(self._tmp)
        env = dict(
            os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", TMPDIR=temporary, TEMP=temporary, TMP=temporary
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                export_command(job_file), stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window on Windows
            )  # fmt: skip

    @property
    def done(self) -> bool:
        return self.process.poll() == 0 and len(self.paths) == len(self.frames)

    def poll(self) -> None:
        """Count the frames written so far; raise if the export process failed."""
        exit_code = self.process.poll()
        self.paths = sorted(self.folder.glob("frame_*.png"))
        if exit_code is None or self.done:
            return
        raise JobError(f"exporting the strip's frames failed (exit code {exit_code}): {self._reason(exit_code)}")

    def _reason(self, exit_code: int) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        named = [line[len(FAILURE) :] for line in lines if line.startswith(FAILURE)]
        if named:
            return named[-1]
        written = f"{len(self.paths)} of {len(self.frames)} frames written"
        if exit_code == 0:  # it says it finished, yet frames are missing
            return f"it ended with only {written} (the log: {self.log_path})"
        last = [line for line in lines if line.strip()][-1:] or ["no output"]
        return f"{last[0]} ({written}; the log: {self.log_path})"

    def close(self) -> None:
        """Stop the export process if it still runs and remove what only it needed: its copy of the
        scene, its temporary folder, a frame it was writing. Safe to call more than once."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if self.process.stdin:
                self.process.stdin.close()
        self._remove_partial_frames()
        self._blend.unlink(missing_ok=True)
        self._blend.with_name(self._blend.name + "@").unlink(missing_ok=True)  # Blender's file while writing
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _remove_partial_frames(self) -> None:
        for partial in self.folder.glob(PARTIAL):
            partial.unlink(missing_ok=True)


# --- in the export process ---------------------------------------------------------------------------


def main(job_file: str) -> None:
    """Open the written scene and render the strip's frames, each file whole; exit non-zero on failure."""
    from ..compat import top_level_strips
    from .export import FrameExporter

    threading.Thread(target=_exit_when_blender_goes_away, daemon=True).start()
    try:
        job = json.loads(Path(job_file).read_text(encoding="utf-8"))
        bpy.ops.wm.open_mainfile(filepath=job["blend"], load_ui=False)
        # A strip may start before frame 0; factory settings would clamp the playhead to 0 there.
        # This Blender's own preferences, never saved.
        bpy.context.preferences.edit.use_negative_frames = True
        scene = bpy.data.scenes[job["scene"]]
        strip = top_level_strips(scene.sequence_editor)[job["strip"]]
        frames = range(*job["frames"])
        exporter = FrameExporter(scene, strip, frames, Path(job["folder"]), tuple(job["size"]))
        while not exporter.done:
            exporter.step(math.inf)
        failed = False
    except Exception as error:
        traceback.print_exc()
        print(f"{FAILURE}{failure_text(error)}", flush=True)
        failed = True
    if not bpy.app.binary_path:
        # The bpy module: leave before its teardown, which can crash (bpy 4.2 at exit), removing
        # the session's temporary folder as the teardown would.
        shutil.rmtree(bpy.app.tempdir, ignore_errors=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(failed))
    if failed:
        raise SystemExit(1)  # Blender exits with it (--python-exit-code covers other exceptions)


def _exit_when_blender_goes_away() -> None:
    """The user's Blender holds our stdin open; when it closes (Blender quit or crashed), stop.
    Reads the raw descriptor: a daemon thread inside sys.stdin's buffer would abort Python's exit."""
    while os.read(sys.stdin.fileno(), 4096):
        pass
    os._exit(3)
