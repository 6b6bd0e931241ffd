"""Who may use the cluster: Ray's token authentication, for the cluster we start and the one we join.

Anyone who can reach a Ray cluster's ports can run code on its machines, so:

* the Ray we start for ``--cluster auto`` listens on the loopback interface only and asks for a
  token made for it, given to Ray's processes in their environment (never a file, a job folder
  or a log line). Ray turns a node address of 127.0.0.1 into the machine's network address and
  then binds its servers to every interface; with its one-machine switch on it keeps loopback;
* a cluster we join must ask for a token, and we must hold it: a cluster that lets anyone in is
  refused unless the user allows that knowingly (``--cluster-allow-unauthenticated``).

Before Ray is started, the cluster is asked once without a token and once with ours, over gRPC
(the call Ray's own clients make first); its answers tell which of those holds. Ray reads the
token as its documentation says: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnsampleError
from ..protocol import ErrorCode

LOOPBACK = "127.0.0.1"
# Ray's switch for clusters of several machines: named for Windows and macOS (where it is off by
# default), read on every platform. Off, Ray takes the loopback address as the node's and every
# server it starts (GCS, raylet, workers, agents) listens there only.
ONE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", ONE_MACHINE)
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
PROBE_SECONDS = 5.0
# The first call of each kind of Ray client: the GCS (host:6379) and Ray Client (ray://host:10001).
PROBES = {"": "/ray.rpc.NodeInfoGcsService/GetClusterId", "ray://": "/ray.rpc.RayletDriver/ClusterInfo"}
HOW_TO_SECURE = (
    "on the head node run 'ray get-auth-token --generate', then start every node with RAY_AUTH_MODE=token "
    "(e.g. 'RAY_AUTH_MODE=token ray start --head'), and copy ~/.ray/auth_token to the other nodes and to this "
    "machine"
)


@dataclass(frozen=True)
class ClusterAccess:
    """How to join a cluster: the token file (None: Ray's own places), and whether a cluster that
    asks for no token may be joined."""

    token_file: Path | None = None
    allow_unauthenticated: bool = False


def local_environment() -> dict[str, str]:
    """Ray's environment for a cluster of this machine: on loopback only, with token authentication
    and a token of its own."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), ONE_MACHINE: "0"}


def remote_environment(
    address: str, endpoint: tuple[str, int], access: ClusterAccess, seconds: float = PROBE_SECONDS
) -> dict[str, str]:
    """Ray's environment for joining the cluster at ``address`` (``endpoint``: its host and port),
    once it has shown that it asks for a token and takes ours. Otherwise raises
    :class:`UnsampleError` (``cluster``; ``bad_settings`` for an unreadable token file) saying what
    to do. Nothing is started."""
    token, source = find_token(access.token_file)
    if _answers(address, endpoint, None, seconds):
        if not access.allow_unauthenticated:
            raise UnsampleError(
                ErrorCode.CLUSTER,
                f"the Ray cluster at {address} asks for no token: anyone who can reach it can run code on its "
                f"machines. Start it with token authentication ({HOW_TO_SECURE}), or, knowing the risk, allow it "
                "with --cluster-allow-unauthenticated (in Blender: Allow Clusters Without a Token). Nothing was "
                "started",
            )
        return {"RAY_AUTH_MODE": "disabled"} | _users_switch()
    if token is None:
        raise UnsampleError(
            ErrorCode.CLUSTER,
            f"the Ray cluster at {address} asks for its token and none was found (--cluster-token-file, "
            f"RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or {DEFAULT_TOKEN_FILE}): copy the token file from its head node "
            "('ray get-auth-token' prints it) and give it with --cluster-token-file (in Blender: Cluster Token "
            "File). Nothing was started",
        )
    if not _answers(address, endpoint, token, seconds):
        raise UnsampleError(
            ErrorCode.CLUSTER,
            f"the Ray cluster at {address} refused the token from {source}: it is not this cluster's token "
            "('ray get-auth-token' on its head node prints the right one). Nothing was started",
        )
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} | _users_switch()


def _users_switch() -> dict[str, str]:
    """The user's own setting of Ray's several-machines switch (on Windows and macOS it must be on
    to join a cluster elsewhere), kept as it is."""
    return {ONE_MACHINE: os.environ[ONE_MACHINE]} if ONE_MACHINE in os.environ else {}


def find_token(token_file: Path | None) -> tuple[str | None, str]:
    """The token and where it came from (for messages: never the token itself): the given file,
    else Ray's places in Ray's order. A given file that cannot be read is an error, not a fallback."""
    if token_file is not None:
        return _read_token(Path(token_file).expanduser()), str(token_file)
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return _read_token(Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()), os.environ["RAY_AUTH_TOKEN_PATH"]
    default = DEFAULT_TOKEN_FILE.expanduser()
    if default.is_file():
        return _read_token(default), str(default)
    return None, "nowhere"


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not a text file"
        raise UnsampleError(ErrorCode.BAD_SETTINGS, f"cannot read the cluster token file {path}: {reason}") from None
    if not token or any(character.isspace() for character in token):
        raise UnsampleError(
            ErrorCode.BAD_SETTINGS,
            f"the cluster token file {path} does not hold a token (one line, as 'ray get-auth-token' prints it)",
        )
    return token


def _answers(address: str, endpoint: tuple[str, int], token: str | None, seconds: float) -> bool:
    """Whether the cluster serves a call made with ``token`` (None: without one). A refusal for the
    token is False; any other answer, even an error of the call itself, means it was let in."""
    import grpc  # comes with Ray

    scheme = "ray://" if address.startswith("ray://") else ""
    host, port = endpoint
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(PROBES[scheme], request_serializer=None, response_deserializer=None)
        try:
            call(b"", metadata=metadata, timeout=seconds)  # both requests are valid when empty
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return False
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise UnsampleError(
                    ErrorCode.CLUSTER,
                    f"the Ray cluster at {address} does not answer as a Ray cluster ({code.name.lower()}): check "
                    "the address and the port. Nothing was started",
                ) from None
    return True


@contextmanager
def applied(environment: Mapping[str, str]) -> Iterator[None]:
    """Ray's authentication and network variables set to ``environment`` (the others unset) while the
    block runs; as they were afterwards. Ray reads them when it connects, and its processes inherit them."""
    before = {name: os.environ.get(name) for name in RAY_VARIABLES}
    _set({name: environment.get(name) for name in RAY_VARIABLES})
    try:
        yield
    finally:
        _set(before)


def _set(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _reload_ray_config()


def _reload_ray_config() -> None:
    """Ray reads these variables once (on import, or when first asked); a process that starts or
    joins a second cluster must make it read them again."""
    import sys

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        value = os.environ.get(ONE_MACHINE)  # read as Ray reads it
        several = value.lower() in ("1", "true") if value is not None else not constants.IS_WINDOWS_OR_OSX
        constants.ENABLE_RAY_CLUSTER = several
    raylet = sys.modules.get("ray._raylet")
    if raylet is None:
        return  # read afresh on import
    try:
        raylet.Config.initialize("")
        raylet.AuthenticationTokenLoader.instance().reset_cache()
    except AttributeError:  # another Ray than the pinned one: it reads the environment as it does
        pass
