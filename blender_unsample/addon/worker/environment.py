"""Set Up Worker: a Python environment for the worker, made with uv from the engine's pinned requirements.

The steps are planned as plain data (:func:`plan`), run one after another on a thread
(:class:`SetupJob`), and uv's output is read into progress (:class:`InstallProgress`) and, on
failure, into one sentence (:func:`failure_reason`). No bpy here: the operator brings the
preferences and moves the job's state into the window manager.
"""

from __future__ import annotations

import atexit
import collections
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .process import PACKAGE_DIR, doctor_report, worker_command

UV_VERSION = "0.13.9"  # uv is installed into the new environment from the same index as the rest
REQUIREMENTS = PACKAGE_DIR / "engine" / "requirements.txt"
CLUSTER_REQUIREMENTS = PACKAGE_DIR / "engine" / "requirements-cluster.txt"  # Ray, while Cluster is on
# Two slots for the environment: a set-up always builds afresh in the one Worker Python does not point
# into, so the environment in use (and a job running from it) is never cleared nor half-updated; the
# preference moves to the new one only once its check has passed. Venvs hold absolute paths, so a
# finished one cannot be renamed into place: the slots take turns instead.
ENV_FOLDERS = ("worker-env", "worker-env-2")
CACHE_FOLDER = "uv-cache"  # next to the environments: a retry or the other slot reuses every download
LOG_NAME = "worker-env.log"
FAILURE_LINES = 60


def env_python(env: Path) -> Path:
    return env / "Scripts" / "python.exe" if os.name == "nt" else env / "bin" / "python"


def env_uv(env: Path) -> Path:
    return env / "Scripts" / "uv.exe" if os.name == "nt" else env / "bin" / "uv"


def points_into(python: str, folder: Path) -> bool:
    """Whether the interpreter path ``python`` lies inside ``folder`` (symbolic links in the folders
    followed, not the interpreter's own: a venv's python links to the Python it was made from)."""
    if not python.strip():
        return False
    path = Path(os.path.abspath(os.path.expanduser(python)))
    # A link loop raises (RuntimeError or OSError): the operator says so rather than guess a slot.
    return path.parent.resolve().is_relative_to(folder.resolve())


def build_folder(root: Path, worker_python: str) -> Path:
    """The slot a set-up builds in: the first one Worker Python does not point into. Worker Python
    elsewhere (Blender's own, a user's environment) leaves the first slot free."""
    first, second = (root / name for name in ENV_FOLDERS)
    return second if points_into(worker_python, first) else first


def local_index(index: str) -> Path | None:
    """The folder a Package Index names, if it is on this machine (a ``file://`` URL or a path)."""
    index = index.strip()
    if not index:
        return None
    if index.startswith("file:"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(index).path))
    if "://" in index:
        return None
    return Path(index).expanduser()


def index_arguments(index: str) -> list[str]:
    """Where pip and uv take packages from. Empty: PyPI (uv adds PyTorch's index for torch)."""
    index = index.strip()
    folder = local_index(index)
    if folder is not None and any(folder.glob("*.whl")):
        return ["--no-index", "--find-links", str(folder)]  # a wheelhouse: a flat folder of wheels
    if folder is not None:
        return ["--index-url", folder.resolve().as_uri()]  # a simple index laid out on disk
    return ["--index-url", index] if index else []


def setup_problem(index: str, online: bool, downloads: bool, running: bool) -> str | None:
    """Why Set Up Worker cannot start now, for the greyed-out button's tooltip; None if it can."""
    if running:
        return "The worker is being set up"
    if local_index(index) is not None:
        return None  # a folder on this machine needs no network
    if not online:
        return "Blender's Allow Online Access is off (Preferences > System > Network): the set-up downloads packages"
    if not downloads:
        return "Downloads are off in Unsample's preferences (Download Missing Models)"
    return None


@dataclass(frozen=True)
class Step:
    kind: str  # "venv", "uv", "install" or "check"
    text: str  # the stage, as the panel says it
    command: list[str]
    share: float  # of the whole progress bar


def plan(
    base_python: str,
    root: Path,
    index: str,
    requirements: Path = REQUIREMENTS,
    cluster: bool = False,
    *,
    worker_python: str = "",
) -> list[Step]:
    """The commands that make the worker environment afresh in the slot of ``root`` that ``worker_python``
    (the current preference; empty: Blender's own) does not point into; with ``cluster``, Ray as well."""
    env = build_folder(root, worker_python)
    python, uv = str(env_python(env)), str(env_uv(env))
    # --clear: whatever an earlier try left there (cut short, failed, or the environment before last)
    # goes; nothing points at this slot, and uv's cache makes the reinstall mostly hard links.
    venv = [base_python, "-m", "venv", "--clear", str(env)]
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    steps = [
        Step("venv", "Creating the Python environment", venv, 0.06),
        Step("uv", "Installing uv", [*pip, *index_arguments(index), f"uv=={UV_VERSION}"], 0.04),
    ]
    install = [uv, "pip", "install", "--python", python, "--cache-dir", str(root / CACHE_FOLDER), "--no-progress"]
    # Without an index of its own, uv picks PyTorch's index for this machine: the CUDA build that
    # fits the NVIDIA driver, the default build on macOS, the CPU build elsewhere.
    install += index_arguments(index) if index.strip() else ["--torch-backend=auto"]
    install += ["-r", str(requirements)]
    if cluster:
        install += ["-r", str(CLUSTER_REQUIREMENTS)]
    steps.append(Step("install", "Installing packages", install, 0.85))
    steps.append(Step("check", "Checking the new environment", worker_command(python, "doctor"), 0.05))
    total = sum(s.share for s in steps)
    return [Step(s.kind, s.text, s.command, s.share / total) for s in steps]


_SIZE = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


@dataclass
class InstallProgress:
    """What uv's output says about the install: packages, announced downloads and their sizes (MB).

    uv names each larger download as it starts ("Downloading torch (846.9MiB)") and as it ends
    ("Downloaded torch"), and counts the packages it resolved, prepared and installed."""

    phase: str = "resolve"  # resolve, download, install, done
    packages: int = 0
    sizes: dict[str, float] = field(default_factory=dict)
    downloaded: set[str] = field(default_factory=set)
    download_started: float | None = None

    def feed(self, line: str, now: float) -> None:
        line = line.strip()
        if match := re.match(r"Resolved (\d+) packages?", line):
            self.packages, self.phase = int(match[1]), "download"
        elif match := re.match(r"Downloading (\S+) \(([\d.]+) ?([KMG]i?B|B)\)", line):
            self.sizes[match[1]] = float(match[2]) * _SIZE[match[3]]
            self.phase = "download"
            self.download_started = self.download_started or now
        elif match := re.match(r"Downloaded (\S+)", line):
            self.downloaded.add(match[1])
        elif re.match(r"Prepared \d+ packages?", line):
            self.phase = "install"
        elif match := re.match(r"(?:Installed|Audited) (\d+) packages?", line):
            self.packages, self.phase = max(self.packages, int(match[1])), "done"

    @property
    def megabytes(self) -> tuple[float, float]:
        """Downloaded and announced MB."""
        return sum(self.sizes[n] for n in self.downloaded if n in self.sizes), sum(self.sizes.values())

    @property
    def fraction(self) -> float:
        """How far the install step is, 0 to 1: downloads weigh most, by their size."""
        if self.phase == "resolve":
            return 0.0
        if self.phase == "download":
            done, total = self.megabytes
            return 0.05 + 0.8 * (done / total if total else 0.0)
        return 0.9 if self.phase == "install" else 1.0

    def text(self) -> str:
        if self.phase == "resolve":
            return "Resolving packages"
        if self.phase == "download" and self.sizes:
            done, total = self.megabytes
            return f"Downloading {len(self.downloaded)}/{len(self.sizes)} files, {done:,.0f} of {total:,.0f} MB"
        if self.phase in {"download", "install"}:
            return f"Installing {self.packages} packages"
        return f"Installed {self.packages} packages"

    def download_eta(self, now: float) -> float | None:
        """Seconds the downloads still need at the rate seen so far; None before one has finished."""
        done, total = self.megabytes
        if self.phase != "download" or not done or self.download_started is None:
            return None
        rate = done / max(now - self.download_started, 1e-3)
        return (total - done) / rate


def failure_reason(output: str, index: str) -> str:
    """One short cause for a failed step, from its output (uv's, pip's or venv's)."""
    where = index.strip() or "PyPI"
    python = f"Python {platform.python_version_tuple()[0]}.{platform.python_version_tuple()[1]}"
    if re.search(r"No space left on device|os error 28|Errno 28", output, re.I):
        return "the disk is full"
    network = (
        r"dns error|failed to lookup address|Name or service not known|Temporary failure in name resolution|"
        r"NewConnectionError|Failed to establish a new connection|Network is unreachable|client error \(Connect\)|"
        r"Connection refused|timed out"
    )
    if re.search(network, output, re.I):
        return f"cannot reach {where} (no network?)"
    missing = re.search(r"Because (\S+) was not found in the (?:package registry|provided package locations)", output)
    missing = missing or re.search(r"No matching distribution found for ([\w.-]+)", output)
    if missing:
        return f"{missing[1]} is not available from {where} for {python} on {sys.platform}"
    unfit = re.search(r"Because (\S+)[^\n]*has no wheels? with a matching (?:Python|platform)", output)
    if unfit:
        return f"{unfit[1]} has no build for {python} on {sys.platform} in {where}"
    if "ensurepip" in output:
        return "this Python cannot make virtual environments (its ensurepip is missing)"
    lines = [re.sub(r"^(error:|cause:|ERROR:|×|╰─▶)\s*", "", s.strip()) for s in output.splitlines() if s.strip()]
    return lines[-1][:200] if lines else "it stopped without saying why"


class SetupJob:
    """The planned steps, run one after another on a thread; the main thread reads the state."""

    def __init__(
        self,
        base_python: str,
        root: Path,
        index: str,
        requirements: Path = REQUIREMENTS,
        cluster: bool = False,
        *,
        worker_python: str,
    ) -> None:
        self.root = root
        self.index = index
        self.env = build_folder(root, worker_python)  # Worker Python's own environment is left alone
        self.log_path = root / LOG_NAME
        self.steps = plan(base_python, root, index, requirements, cluster, worker_python=worker_python)
        self.step = self.steps[0]
        self.install = InstallProgress()
        self.started = time.monotonic()
        self.outcome: str | None = None  # "ok", "failed" or "cancelled" once over
        self.message = ""
        self.report: dict | None = None
        self.process: subprocess.Popen | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="unsample-setup", daemon=True)

    @property
    def python(self) -> Path:
        return env_python(self.env)

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def start(self) -> SetupJob:
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def cancel(self) -> None:
        """Stop now: the running command and everything it started are killed."""
        self._cancelled = True
        process = self.process
        if process is not None and process.poll() is None:
            _kill_tree(process)

    def fraction(self) -> float:
        before = sum(s.share for s in self.steps[: self.steps.index(self.step)])
        within = self.install.fraction if self.step.kind == "install" else 0.0
        return 1.0 if self.outcome == "ok" else min(1.0, before + self.step.share * within)

    def stage(self) -> str:
        return self.install.text() if self.step.kind == "install" else self.step.text

    def eta(self, now: float | None = None) -> float:
        """Seconds left, or -1 while unknown: the download rate when downloading, else time so far."""
        now = time.monotonic() if now is None else now
        downloads = self.install.download_eta(now) if self.step.kind == "install" else None
        if downloads is not None:
            return downloads + 15.0  # unpacking and the check after the downloads
        fraction = self.fraction()
        return (now - self.started) * (1 - fraction) / fraction if fraction >= 0.15 else -1.0

    # --- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as log:
                now = time.strftime("%Y-%m-%d %H:%M:%S")
                log.write(f"\n=== Set Up Worker, {now}, in {self.env.name}, index: {self.index or 'PyPI'}\n")
                self._run_steps(log)
        except OSError as error:  # the folder or its log cannot be written (disk full, permissions)
            self._end("failed", f"Set Up Worker failed: {_os_cause(error)} ({self.root})")
        except Exception as error:  # never leave the panel waiting on a dead thread
            self._end("failed", f"Set Up Worker failed: {error}. Log: {self.log_path}")

    def _run_steps(self, log) -> None:
        for step in self.steps:
            self.step = step
            log.write(f"$ {' '.join(step.command)}\n")
            log.flush()
            code, output = self._run_command(step, log)
            if self._cancelled:
                log.write("cancelled\n")
                self._end("cancelled", f"Set Up Worker cancelled; press it again to resume. Log: {self.log_path}")
                return
            if code == 0 and step.kind == "check":
                self.report = doctor_report(output)
                missing = (self.report or {"missing": ["its report"]}).get("missing")
                if missing:
                    cause = f"the new environment still lacks {', '.join(missing)}"
                    self._end("failed", f"Set Up Worker failed: {cause}. Log: {self.log_path}")
                    return
            if code != 0:
                log.write(f"exit code {code}\n")
                cause = failure_reason(output, self.index).rstrip(".")  # the message adds its own full stop
                where = step.text[0].lower() + step.text[1:]
                self._end("failed", f"Set Up Worker failed ({where}): {cause}. Log: {self.log_path}")
                return
        self._end("ok", f"Worker set up in {self.env}")

    def _run_command(self, step: Step, log) -> tuple[int, str]:
        tail: collections.deque[str] = collections.deque(maxlen=FAILURE_LINES)
        environment = setup_environment()
        self.process = subprocess.Popen(
            step.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            # Its own process group, so Cancel stops uv and whatever uv started, all at once.
            start_new_session=os.name != "nt",
            creationflags=(
                getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(subprocess, "CREATE_NO_WINDOW", 0)
            ),
        )
        if self._cancelled:  # cancelled while it was starting
            _kill_tree(self.process)
        for line in self.process.stdout:
            log.write(line)
            log.flush()
            tail.append(line)
            if step.kind == "install":
                self.install.feed(line, time.monotonic())
        return self.process.wait(), "".join(tail)

    def _end(self, outcome: str, message: str) -> None:
        self.message = message
        self.outcome = outcome  # last: the main thread reads the message once this is set


def setup_environment() -> dict[str, str]:
    """The commands' environment: none of Blender's own Python paths, plain unbuffered text output."""
    environment = {k: v for k, v in os.environ.items() if k not in {"PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"}}
    return dict(environment, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", NO_COLOR="1")


def _kill_tree(process: subprocess.Popen) -> None:
    try:
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
        else:
            os.killpg(process.pid, signal.SIGKILL)  # the group's id is the leader's pid
    except (OSError, ProcessLookupError):
        pass  # already gone


def _os_cause(error: OSError) -> str:
    return "the disk is full" if error.errno == 28 else f"{error.strerror or error}"


# --- the one set-up that may run at a time ---------------------------------------------------------

_current: SetupJob | None = None


def running() -> SetupJob | None:
    return _current if _current is not None and not _current.done else None


def latest() -> SetupJob | None:
    """The set-up that runs or ran last in this session."""
    return _current


def start(
    base_python: str,
    root: Path,
    index: str,
    requirements: Path = REQUIREMENTS,
    cluster: bool = False,
    *,
    worker_python: str,
) -> SetupJob:
    """Set up the worker on a thread, beside the environment ``worker_python`` (the current preference)
    points into, if it is one of ours; the caller switches the preference once the job is ``ok``."""
    global _current
    if running() is not None:
        raise RuntimeError("the worker is being set up already")
    _current = SetupJob(base_python, root, index, requirements, cluster, worker_python=worker_python).start()
    return _current


def cancel_running(wait: float = 5.0) -> None:
    """Stop a running set-up (the add-on is disabled, or Blender quits) and wait a little for it."""
    job = running()
    if job is not None:
        job.cancel()
        job.wait(wait)


atexit.register(cancel_running)  # no uv left running after Blender has gone
