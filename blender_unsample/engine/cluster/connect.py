"""Reach a Ray cluster, or start one on this machine, and ship the engine's code to its workers."""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..errors import UnsampleError
from ..protocol import ErrorCode
from . import auth
from .auth import ClusterAccess

# A cluster that has not answered a TCP connection within this long is reported as unreachable:
# Ray itself would keep retrying for a minute or more before giving up.
CONNECT_SECONDS = 5.0
LOCAL = "auto"  # a Ray instance started for the job with every GPU of this machine
DEFAULT_PORTS = {"": 6379, "ray://": 10001}  # the head node's GCS port; Ray Client's port

# The package that holds the engine: "blender_unsample" in a checkout, "unsample_worker" when
# the add-on starts the worker. Ray workers must import it under the same name to unpickle
# what the driver sends, so the code is shipped to them under that name.
PACKAGE_NAME = __name__.split(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    nodes: int
    gpus: int
    cpus: int

    def report(self) -> dict[str, object]:
        """What ``doctor --cluster`` prints (protocol.CLUSTER_REPORT_KEYS)."""
        return {"ok": True, "address": self.address, "nodes": self.nodes, "gpus": self.gpus, "cpus": self.cpus}


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        requirements = PACKAGE_DIR / "engine" / "requirements-cluster.txt"
        raise UnsampleError(
            ErrorCode.WORKER_SETUP,
            f"a cluster needs Ray in the worker's Python ({sys.executable}): install it with "
            f"'{sys.executable} -m pip install -r {requirements}', or turn the Cluster preference on and "
            "press Set Up Worker",
        ) from None
    return ray


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of ``host[:port]`` or ``ray://host[:port]``; Ray's default ports if none."""
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address[len(scheme) :].strip().rstrip("/")
    host, colon, port = rest.rpartition(":")
    if not colon:
        host, port = rest, str(DEFAULT_PORTS[scheme])
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UnsampleError(
            ErrorCode.BAD_SETTINGS,
            f"not a Ray cluster address: {address!r} (use host:port, e.g. head-node:6379, or ray://head-node:10001)",
        )
    return host, int(port)


def check_reachable(address: str, seconds: float = CONNECT_SECONDS) -> None:
    """Fail within ``seconds`` if nothing listens at ``address``, before Ray starts anything."""
    host, port = split_address(address)
    try:
        socket.create_connection((host, port), timeout=seconds).close()
    except OSError as error:
        timed_out = isinstance(error, TimeoutError)
        reason = f"nothing within {seconds:g} s" if timed_out else (error.strerror or str(error)).lower()
        raise UnsampleError(
            ErrorCode.CLUSTER,
            f"the Ray cluster at {address} does not answer ({reason}): start it there with "
            f"'ray start --head --port={port}', or check the address and the firewall. Nothing was started",
        ) from error


def connect(address: str, scratch: Path) -> tuple[ModuleType, bool]:
    """Ray, initialised for ``address`` ("auto": a local instance on the loopback interface) with the
    engine's code staged in ``scratch`` for its workers. Returns (ray, joined): whether this call
    started or joined it, so must shut it down when done. Ray's authentication variables must be set
    already (:func:`session` does it). A Ray already initialised in this process (a test's, a
    script's) is used as it is: whoever initialised it gave it :func:`runtime_env`."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address == LOCAL:
        # "local" starts a new instance even where RAY_ADDRESS names another; nothing listens beyond this machine.
        options |= {"address": "local", "_node_ip_address": auth.LOOPBACK}
    else:
        options["address"] = address
    try:
        # Code to ship can only be given for the whole Ray job, not per worker.
        ray.init(runtime_env=runtime_env(scratch), **options)
    except (ConnectionError, RuntimeError) as error:
        raise UnsampleError(ErrorCode.CLUSTER, f"cannot join the Ray cluster at {address}: {error}") from error
    return ray, True


def describe(ray: ModuleType, address: str) -> ClusterInfo:
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return ClusterInfo(address, nodes, int(resources.get("GPU", 0)), int(resources.get("CPU", 0)))


def runtime_env(scratch: Path) -> dict[str, object]:
    """Ray's per-actor environment: the engine's code, under the name this process imports it by.
    Only the engine travels (a few hundred KB), not the add-on or its bundled wheels."""
    staged = scratch / PACKAGE_NAME
    if not staged.exists():
        staged.mkdir(parents=True)
        shutil.copy2(PACKAGE_DIR / "__init__.py", staged / "__init__.py")
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tiny_models.py")
        shutil.copytree(PACKAGE_DIR / "engine", staged / "engine", ignore=ignore)
    return {"py_modules": [str(staged)]}


def environment(address: str, access: ClusterAccess) -> dict[str, str]:
    """Ray's authentication variables for ``address``: a fresh token for a local instance; for a
    cluster elsewhere, once it answered and showed it asks for a token we hold (or may be joined
    without one, as ``access`` allows)."""
    if address == LOCAL:
        return auth.local_environment()
    check_reachable(address)
    return auth.remote_environment(address, split_address(address), access)


@contextmanager
def session(address: str, access: ClusterAccess | None = None) -> Iterator[ModuleType]:
    """Ray for ``address`` while the block runs, joined as ``access`` allows, the engine's code staged
    for its workers in a folder of its own; after the block the folder goes, Ray is shut down if
    :func:`connect` started or joined it here, and the authentication variables are as they were."""
    access = access or ClusterAccess()
    scratch = Path(tempfile.mkdtemp(prefix="unsample-cluster-"))
    try:
        # A Ray this process is connected to already is used as it is (see connect), its variables too.
        variables = contextlib.nullcontext() if _initialised() else auth.applied(environment(address, access))
        with variables:
            ray, joined = connect(address, scratch)
            try:
                yield ray
            finally:
                if joined:
                    ray.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _initialised() -> bool:
    """Whether this process is connected to a Ray already (see :func:`connect`)."""
    ray = sys.modules.get("ray")
    return bool(ray and ray.is_initialized())
