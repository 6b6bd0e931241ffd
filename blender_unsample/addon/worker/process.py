"""The worker process: start it, read its events on threads, stop it."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from ...engine.protocol import ErrorCode, ErrorEvent, Event, event_from_json

PACKAGE_DIR = Path(__file__).resolve().parents[2]  # blender_unsample/, or the installed extension

# Imports the package from its folder under a fixed name, whatever the folder is called
# ("blender_unsample" in a checkout, the extension id when installed), without putting the
# folder's siblings (other extensions) on the worker's import path.
_BOOTSTRAP = """
import importlib.util, sys
folder = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location(
    "unsample_worker", folder + "/__init__.py", submodule_search_locations=[folder])
package = importlib.util.module_from_spec(spec)
sys.modules["unsample_worker"] = package
spec.loader.exec_module(package)
from unsample_worker.engine.cli import main
sys.exit(main())
"""

LOG_TAIL_LINES = 30


def worker_environment(python: str) -> dict[str, str]:
    """The environment for the worker: Blender's own Python also needs the extension's wheels."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    env.pop("PYTHONHOME", None)
    if python == sys.executable:
        # Bundled wheels live in a site-packages folder Blender adds to its own sys.path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
    else:
        env.pop("PYTHONPATH", None)  # another environment brings its own packages
    return env


def worker_command(python: str, *args: str) -> list[str]:
    return [python, "-c", _BOOTSTRAP, str(PACKAGE_DIR), *args]


class Worker:
    """One running worker. Events arrive on a queue, filled by a thread reading stdout."""

    def __init__(self, python: str, args: list[str], log_path: Path) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.log_path = log_path
        self._tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.process = subprocess.Popen(
            worker_command(python, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=worker_environment(python),
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
        self._readers = [
            threading.Thread(target=self._read_events, name="unsample-events", daemon=True),
            threading.Thread(target=self._read_log, name="unsample-log", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_events(self) -> None:
        for line in self.process.stdout:
            try:
                self.events.put(event_from_json(line))
            except ValueError:
                self._tail.append(line.rstrip())  # stray output: keep it with the log

    def _read_log(self) -> None:
        with open(self.log_path, "a", encoding="utf-8") as log:
            for line in self.process.stderr:
                log.write(line)
                log.flush()
                self._tail.append(line.rstrip())

    def take_events(self, limit: int) -> list[Event]:
        taken = []
        while len(taken) < limit:
            try:
                taken.append(self.events.get_nowait())
            except queue.Empty:
                break
        return taken

    def finished(self) -> bool:
        """The process has exited and every event it printed has been read."""
        return self.process.poll() is not None and not any(r.is_alive() for r in self._readers)

    @property
    def exit_code(self) -> int | None:
        return self.process.poll()

    def log_tail(self) -> str:
        return "\n".join(self._tail)

    def cancel(self) -> None:
        """Ask the worker to stop at its next check point."""
        try:
            self.process.stdin.write("cancel\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            # Already gone. Close the pipe now: left open, the unsent line would be flushed again when
            # the pipe is collected, raising where nobody can catch it.
            with contextlib.suppress(OSError, ValueError):
                self.process.stdin.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def failure(self) -> ErrorEvent:
        """An error event for a worker that exited without saying why (crash, kill, missing torch)."""
        code = self.exit_code
        last = self.log_tail().splitlines()[-1:] or ["no output"]
        return ErrorEvent(
            code=ErrorCode.INTERNAL.value,
            message=f"the worker stopped unexpectedly (exit code {code}): {last[0]}",
            detail=self.log_tail(),
        )


# --- what the worker Python can do, asked in the background ------------------------------------------

# A report of missing packages is asked again after this long: the user may install them by hand (it
# greys Restyle, so it must not outlive the problem). A good report stands until forgotten.
RECHECK_SECONDS = 20.0

_reports: dict[str, dict | None] = {}
_received: dict[str, float] = {}  # when each report came in
_asking: set[str] = set()
_first_asks: set[str] = set()  # asked with no report before it
SETTLE_SECONDS = 0.5
_lock = threading.Lock()


def worker_report(python: str) -> dict | None:
    """The worker Python's ``doctor`` report; None while it is first asked (in a thread). A report
    of missing packages stays in use while it is asked again."""
    with _lock:
        report = _reports.get(python)
        stale = report is not None and report.get("missing") and time.monotonic() - _received[python] > RECHECK_SECONDS
        if python in _asking or (python in _reports and not stale):
            return report
        if _reports.setdefault(python, None) is None:
            _first_asks.add(python)
        else:
            _first_asks.discard(python)
        _asking.add(python)
    threading.Thread(target=_ask, args=(python,), name="unsample-doctor", daemon=True).start()
    return report


def settled_worker_report(python: str) -> dict | None:
    """The report as an operator's poll should see it. Blender polls an operator twice in one call
    (bpy.ops, then the call itself) and answers PASS_THROUGH, silently, when the second poll fails:
    a first report that has just come in counts as not yet in for a moment, so both polls agree."""
    report = worker_report(python)
    with _lock:
        just_in = python in _first_asks and time.monotonic() - _received.get(python, 0.0) < SETTLE_SECONDS
    return None if just_in else report


def forget_worker_reports() -> None:
    """Ask again next time (the preference changed, or packages were installed)."""
    with _lock:
        _reports.clear()


def doctor_report(output: str) -> dict | None:
    """The worker's doctor report: the last line of its output that is a JSON object."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def _ask(python: str) -> None:
    try:
        result = subprocess.run(
            worker_command(python, "doctor"),
            env=worker_environment(python),
            capture_output=True,
            text=True,
            timeout=120,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
        report = doctor_report(result.stdout)
        if report is None:
            raise ValueError(f"it printed no report (exit code {result.returncode})")
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        report = {"error": f"cannot run {python}: {error}", "missing": ["torch"]}
    with _lock:
        _reports[python] = report
        _received[python] = time.monotonic()
        _asking.discard(python)
