"""Ray head nodes started as a user starts one (``ray start --head``), for the cluster security tests of
the engine and of Blender: with token authentication or without, on the loopback interface only.

Each head runs in a process group of its own (``ray start --block``), in its own HOME and Ray temp
folder, so stopping it stops only its processes and its token lands nowhere the tests read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

STARTUP_SECONDS = 90.0


@dataclass
class Head:
    address: str  # host:port of its GCS
    client_address: str  # ray://host:port of its Ray Client server
    token: str | None
    process: subprocess.Popen
    home: Path

    def stop(self) -> None:
        """Stop the head and every process it started (its process group), whatever state they are in."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):  # what outlived the leader, e.g. the GCS
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_head(python: str, folder: Path, token: str | None) -> Head:
    """A one-CPU head node listening on 127.0.0.1: with token authentication and ``token`` as its
    token, or (``token`` None) without authentication, as a `ray start` without RAY_AUTH_MODE=token is."""
    home = folder / "home"
    home.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # Ray's socket paths must stay short
    port, client_port = free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    # Ray's one-machine switch keeps every server of the head on 127.0.0.1 (without it Ray binds all
    # interfaces, whatever --node-ip-address says): no test opens a cluster to the network.
    environment |= {"HOME": str(home), "RAY_AUTH_MODE": "token" if token else "disabled"}
    environment["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if token:
        environment["RAY_AUTH_TOKEN"] = token
    ray = Path(python).parent / "ray"
    command = [
        str(ray), "start", "--head", "--block", f"--port={port}", f"--ray-client-server-port={client_port}",
        "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
        "--disable-usage-stats", f"--temp-dir={temp}",
    ]  # fmt: skip
    log = open(folder / "head.log", "w")  # noqa: SIM115 - the head's whole life
    process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", token, process, home)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start failed: {(folder / 'head.log').read_text()[-2000:]}")
        if all(_listens(p) for p in (port, client_port)):
            time.sleep(1.0)  # the GCS answers before the head's raylet has registered
            return head
        time.sleep(0.3)
    head.stop()
    raise RuntimeError(f"no Ray head within {STARTUP_SECONDS:.0f} s: {(folder / 'head.log').read_text()[-2000:]}")


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True
