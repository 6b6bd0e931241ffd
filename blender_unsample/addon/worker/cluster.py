"""The Cluster preference: what it asks of the worker, why it cannot be used now, and Check Cluster.

Blender never imports Ray: the worker does, given ``--cluster``. Check Cluster runs the worker's
``doctor --cluster`` on a thread (a local Ray takes a few seconds to start) and keeps its answer per
worker Python and cluster, as the worker's own check is kept. No bpy here.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

from .process import doctor_report, worker_command, worker_environment

LOCAL = "auto"  # the worker's --cluster value for a Ray cluster of this machine's GPUs, started for the job
CHECK_TIMEOUT = 120.0  # seconds: starting a local Ray on a slow machine, or a far cluster's answer
ADDRESS_PLACEHOLDER = "head-node:6379 or ray://head-node:10001"


@dataclass(frozen=True)
class ClusterChoice:
    """The cluster the preferences name, as the worker is told of it."""

    target: str  # LOCAL or an address
    token_file: str = ""  # an address's token file; empty: Ray's own places
    allow_unauthenticated: bool = False

    def arguments(self) -> list[str]:
        """The worker's flags: --cluster, and for a cluster elsewhere how it may be joined."""
        arguments = ["--cluster", self.target]
        if self.target != LOCAL:  # the Ray we start makes its own token
            if self.token_file.strip():
                arguments += ["--cluster-token-file", os.path.expanduser(self.token_file.strip())]
            if self.allow_unauthenticated:
                arguments.append("--cluster-allow-unauthenticated")
        return arguments


def cluster_choice(prefs: Any, token_file: str) -> ClusterChoice | None:
    """The Cluster preferences as the worker gets them, with the token file resolved to a path
    (prefs.cluster_token_file()); None for no cluster (or no preferences)."""
    target = prefs and cluster_target(prefs.cluster, prefs.cluster_address)
    if not target:
        return None
    return ClusterChoice(target, token_file, prefs.cluster_allow_unauthenticated)


def cluster_target(cluster: str, address: str) -> str | None:
    """The worker's ``--cluster`` value for the preference (NONE, LOCAL or ADDRESS); None for no cluster."""
    if cluster == "LOCAL":
        return LOCAL
    if cluster == "ADDRESS":
        return address.strip() or None
    return None


def cluster_problem(cluster: str, address: str, token_file: str = "") -> str | None:
    """Why the Cluster preference cannot be used as it is, for a greyed-out button; None if it can."""
    if cluster != "ADDRESS":
        return None
    address = address.strip()
    if not address:
        return "Cluster is set to a Ray cluster, but its address is empty (Preferences > Add-ons > Unsample)"
    if re.search(r"\s", address):
        return f"'{address}' is not a Ray cluster address: expected {ADDRESS_PLACEHOLDER}"
    token_file = os.path.expanduser(token_file.strip())
    if token_file and not os.path.isfile(token_file):
        return f"The Cluster Token File {token_file} is not a file (Preferences > Add-ons > Unsample)"
    return None


def cluster_arguments(choice: ClusterChoice | None) -> list[str]:
    return choice.arguments() if choice else []


def display_name(target: str) -> str:
    """The cluster as the preference names it: the worker's "auto" is this machine's GPUs."""
    return "This Machine's GPUs" if target == LOCAL else target


def describe(report: dict) -> str:
    """A check's answer in a few words: the cluster's GPUs and nodes, or why it cannot be used."""
    if not report.get("ok"):
        return report.get("error") or "the cluster check failed without saying why"
    gpus, nodes = int(report.get("gpus") or 0), int(report.get("nodes") or 0)
    text = f"{_count(gpus, 'GPU')} on {_count(nodes, 'node')}"
    if not gpus:
        text += f": jobs run on its {_count(int(report.get('cpus') or 0), 'CPU')}"
    return text


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def setup_hint(message: str) -> str:
    """A worker that lacks Ray is told to install it; in Blender that is Set Up Worker's job."""
    if "Set Up Worker" in message:
        return ""  # said already
    if re.search(r"\bray\b", message, re.I) and re.search(r"install", message, re.I):
        return " Set Up Worker installs Ray while Cluster is on."
    return ""


# --- Check Cluster: asked on a thread, answers kept per (worker Python, cluster) -----------------------

_reports: dict[tuple[str, ClusterChoice], dict | None] = {}
_threads: dict[tuple[str, ClusterChoice], threading.Thread] = {}
_lock = threading.Lock()


def cluster_report(python: str, choice: ClusterChoice) -> dict | None:
    """The last check's answer; ``{"checking": True}`` while one runs; None if never checked."""
    with _lock:
        if (python, choice) not in _reports:
            return None
        return _reports[(python, choice)] or {"checking": True}


def check_cluster(python: str, choice: ClusterChoice) -> threading.Thread:
    """Ask the worker about the cluster in the background; the thread asking (one per cluster at a time)."""
    key = (python, choice)
    with _lock:
        if _reports.get(key, {}) is None:
            return _threads[key]  # being asked already
        _reports[key] = None
        thread = _threads[key] = threading.Thread(target=_ask, args=key, name="unsample-cluster-check", daemon=True)
    thread.start()
    return thread


def checking() -> bool:
    with _lock:
        return any(report is None for report in _reports.values())


def forget_cluster_reports() -> None:
    """Check again next time (the worker Python changed, or packages were installed)."""
    with _lock:
        for key in [key for key, report in _reports.items() if report is not None]:
            del _reports[key]


def _ask(python: str, choice: ClusterChoice) -> None:
    try:
        result = subprocess.run(
            worker_command(python, "doctor", *choice.arguments()),
            env=worker_environment(python),
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=CHECK_TIMEOUT,
            stdin=subprocess.DEVNULL,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
        report = doctor_report(result.stdout)
        if report is None or "ok" not in report:
            last = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
            report = {"ok": False, "error": f"the worker could not check the cluster: {last[:200]}"}
    except subprocess.TimeoutExpired:
        report = {"ok": False, "error": f"the cluster did not answer within {CHECK_TIMEOUT:.0f} seconds"}
    except OSError as error:
        report = {"ok": False, "error": f"cannot run the worker Python {python}: {error.strerror or error}"}
    if not report.get("ok"):
        report["error"] = describe(report) + setup_hint(describe(report))
    with _lock:
        _reports[(python, choice)] = report
