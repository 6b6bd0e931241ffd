"""Who can use the cluster: the Ray we start listens on loopback only and asks for a token of its own;
a cluster we join must ask for a token and take ours, or be allowed knowingly.

Heads are started as users start them (``ray start --head``, tests/ray_heads.py) and joined through
the command line, as Blender joins them.
"""

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import write_clip

pytest.importorskip("ray", reason="the cluster tests need the cluster extra (Ray)")
psutil = pytest.importorskip("psutil", reason="comes with Ray")

from blender_unsample.engine.cluster import auth  # noqa: E402
from blender_unsample.engine.cluster.auth import ONE_MACHINE  # noqa: E402
from blender_unsample.engine.errors import UnsampleError  # noqa: E402
from blender_unsample.engine.protocol import ErrorCode  # noqa: E402
from tests.ray_heads import start_head  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "5e1f" * 16


def clean_environment(home: Path, **extra: str) -> dict[str, str]:
    """This environment without Ray's token variables, HOME an empty folder (no ~/.ray/auth_token)."""
    home.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", ONE_MACHINE))}
    return environment | {"HOME": str(home), "PYTHONPATH": str(ROOT)} | extra


# The heads listen on loopback only, so a job joins them as a node on this machine's loopback too: the
# user's own setting of Ray's one-machine switch, which the engine keeps when it joins a cluster.
ON_LOOPBACK = {ONE_MACHINE: "0"}


def doctor(address: str, home: Path, *flags: str, **environment: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "blender_unsample.engine", "doctor", "--cluster", address, *flags],
        cwd=ROOT, env=clean_environment(home, **ON_LOOPBACK, **environment), capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-2000:]
    return result.returncode, json.loads(lines[-1])


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A head node that asks for TOKEN."""
    head = start_head(sys.executable, tmp_path_factory.mktemp("secured"), TOKEN)
    yield head
    head.stop()


@pytest.fixture(scope="module")
def open_head(tmp_path_factory):
    """A head node started without authentication: anyone who reaches it can run code on it."""
    head = start_head(sys.executable, tmp_path_factory.mktemp("open"), None)
    yield head
    head.stop()


# --- a cluster elsewhere --------------------------------------------------------------------------------


def test_a_cluster_is_joined_with_its_token_file(secured, tmp_path):
    token_file = tmp_path / "jeton d'accès ✓" / "auth_token"  # a name a user might give it; Windows line end
    token_file.parent.mkdir()
    token_file.write_bytes(TOKEN.encode() + b"\r\n")
    code, report = doctor(secured.address, tmp_path / "home", "--cluster-token-file", str(token_file))
    assert (code, report["ok"], report["nodes"]) == (0, True, 1), report


def test_a_cluster_is_joined_with_the_token_where_ray_keeps_it(secured, tmp_path):
    (tmp_path / "home" / ".ray").mkdir(parents=True)
    (tmp_path / "home" / ".ray" / "auth_token").write_text(TOKEN)
    code, report = doctor(secured.address, tmp_path / "home")
    assert (code, report["ok"]) == (0, True), report


def test_a_cluster_that_asks_for_a_token_none_was_given_says_where_to_find_it(secured, tmp_path):
    started = time.monotonic()
    code, report = doctor(secured.address, tmp_path / "home")
    assert code == ErrorCode.CLUSTER.exit_code and not report["ok"]
    assert "asks for its token and none was found" in report["error"]
    assert "ray get-auth-token" in report["error"] and "--cluster-token-file" in report["error"]
    assert time.monotonic() - started < 60, "refused before Ray starts waiting on the cluster"


def test_a_wrong_token_is_refused_naming_the_file_never_the_token(secured, tmp_path):
    token_file = tmp_path / "someone-elses-token"
    token_file.write_text("0" * 64)
    code, report = doctor(secured.address, tmp_path / "home", "--cluster-token-file", str(token_file))
    assert code == ErrorCode.CLUSTER.exit_code
    assert f"refused the token from {token_file}" in report["error"]
    assert "0" * 64 not in report["error"]


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("missing", None, "cannot read the cluster token file {path}: No such file or directory"),
        ("a-folder", "folder", "cannot read the cluster token file {path}: Is a directory"),
        ("empty", b"\n", "the cluster token file {path} does not hold a token"),
        ("binary", b"\xff\xfe\x00token", "cannot read the cluster token file {path}: not a text file"),
    ],
)
def test_a_token_file_that_cannot_be_read_is_a_settings_error(secured, tmp_path, name, content, said):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    code, report = doctor(secured.address, tmp_path / "home", "--cluster-token-file", str(path))
    assert code == ErrorCode.BAD_SETTINGS.exit_code
    assert said.format(path=path) in report["error"]


def test_a_ray_client_address_asks_for_the_token_too(secured, tmp_path):
    code, report = doctor(secured.client_address, tmp_path / "home")
    assert code == ErrorCode.CLUSTER.exit_code
    assert "asks for its token and none was found" in report["error"]


def test_a_ray_client_address_is_joined_with_the_token(secured, tmp_path):
    token_file = tmp_path / "auth_token"
    token_file.write_text(TOKEN)
    code, report = doctor(secured.client_address, tmp_path / "home", "--cluster-token-file", str(token_file))
    assert (code, report["ok"], report["nodes"]) == (0, True, 1), report


def test_a_cluster_that_asks_for_no_token_is_refused_with_how_to_secure_it(open_head, tmp_path):
    code, report = doctor(open_head.address, tmp_path / "home")
    assert code == ErrorCode.CLUSTER.exit_code
    assert "asks for no token: anyone who can reach it can run code on its machines" in report["error"]
    assert "RAY_AUTH_MODE=token" in report["error"] and "--cluster-allow-unauthenticated" in report["error"]


def test_a_cluster_that_asks_for_no_token_is_joined_when_the_user_allows_it(open_head, tmp_path):
    code, report = doctor(open_head.address, tmp_path / "home", "--cluster-allow-unauthenticated")
    assert (code, report["ok"], report["nodes"]) == (0, True, 1), report


def test_a_restyle_runs_on_a_cluster_joined_with_its_token(secured, tiny_spec, tmp_path):
    """The token reaches what Ray starts for the job there: the worker's actors, the object transfers."""
    clip = tmp_path / "clip"
    write_clip(clip, 6)
    spec = tiny_spec(clip, out=str(tmp_path / "out"), steps=2, inversion_refinement=0)
    job = tmp_path / "job.json"
    job.write_text(spec.to_json())
    token_file = tmp_path / "auth_token"
    token_file.write_text(TOKEN)
    result = subprocess.run(
        [sys.executable, "-m", "blender_unsample.engine", "restyle", "--job", str(job), "--progress", "json",
         "--cluster", secured.address, "--cluster-token-file", str(token_file)],
        cwd=ROOT, env=clean_environment(tmp_path / "home", **ON_LOOPBACK), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "out").glob("*.png"))) == 6
    assert TOKEN not in result.stdout + result.stderr


# --- the cluster we start -------------------------------------------------------------------------------


def test_a_local_cluster_listens_on_loopback_only_and_its_token_is_in_no_file(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 6)
    spec = tiny_spec(clip, out=str(tmp_path / "out"), steps=2, inversion_refinement=0)
    job = tmp_path / "job.json"
    job.write_text(spec.to_json())
    ray_temp = Path(tempfile.mkdtemp(prefix="ut", dir="/tmp"))  # Ray's socket paths must stay short
    process = subprocess.Popen(
        [sys.executable, "-m", "blender_unsample.engine", "restyle", "--job", str(job), "--progress", "json",
         "--cluster", "auto", "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, env=clean_environment(tmp_path / "home", RAY_TMPDIR=str(ray_temp)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    listening, tokens, refused_without_token = set(), set(), None
    try:
        while process.poll() is None:  # every process the job started, as long as it runs
            for child in _descendants(process.pid):
                try:
                    ports = {(c.laddr.ip, c.laddr.port) for c in child.net_connections("inet") if c.status == "LISTEN"}
                    listening |= ports
                    tokens.add(child.environ().get("RAY_AUTH_TOKEN"))
                    name = child.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if name == "gcs_server" and ports and refused_without_token is None:
                    refused_without_token = _refused_without_token(min(port for _, port in ports))
            time.sleep(0.2)
        stdout, stderr = process.communicate()
        assert process.returncode == 0, stderr[-3000:]
        assert listening, "the job's Ray was seen listening"
        beyond = sorted(address for address in listening if not _loopback(address[0]))
        assert not beyond, f"listening beyond loopback: {beyond}"
        assert refused_without_token, "its GCS refuses a call without the token"
        tokens.discard(None)
        assert len(tokens) == 1, "one token, given to every Ray process the job started"
        token = tokens.pop()
        assert not (tmp_path / "home" / ".ray").exists(), "no token file in the user's home"
        assert token not in stdout + stderr
        for folder in (tmp_path, ray_temp):  # the job's folders, Ray's session and its logs
            for path in folder.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    assert token.encode() not in path.read_bytes(), f"the token is in {path}"
    finally:
        if process.poll() is None:
            process.kill()
        shutil.rmtree(ray_temp, ignore_errors=True)


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _refused_without_token(port: int) -> bool | None:
    """Whether the GCS at ``port`` refuses a call without a token; None while it does not answer yet."""
    try:
        return not auth._answers(f"127.0.0.1:{port}", ("127.0.0.1", port), None, 2.0)
    except UnsampleError:
        return None


def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
