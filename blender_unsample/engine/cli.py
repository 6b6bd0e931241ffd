"""The worker's command line: ``python -m blender_unsample.engine restyle ...``.

Blender runs it with ``--job job.json --progress json --stdin-control`` and reads events from
stdout; scripts and render farms run it with flags. Every JobSpec setting is a flag of the same
name. Errors and warnings always reach stderr, whatever ``--progress`` says.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .errors import Cancelled, CancelRequest, UnsampleError
from .protocol import (
    FAMILIES,
    ErrorCode,
    ErrorEvent,
    Event,
    JobSpec,
    Progress,
    WarningEvent,
    default_cache_folder,
    event_to_json,
)

# After stdin closes (Blender went away), give the job this long to stop at a check point
# before the process ends itself.
PARENT_GONE_GRACE_SECONDS = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "doctor" and args.cluster:
        return _doctor_cluster(args)  # answers fast: no model libraries loaded for it
    _quiet_libraries()
    if args.command == "tiny-models":
        try:
            from .tiny_models import build_tiny_models
        except ImportError:  # the installed extension leaves this test fixture out
            print(
                "tiny-models: run it from a checkout of Unsample; the installed extension has no test models",
                file=sys.stderr,
            )
            return 2

        models = build_tiny_models(args.folder, args.family)
        print(json.dumps({k: str(v) for k, v in dataclasses.asdict(models).items()}))
        return 0
    if args.command == "doctor":
        from .job.doctor import report

        print(json.dumps(report()))
        return 0
    return _restyle(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blender_unsample.engine", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    restyle = commands.add_parser(
        "restyle",
        help="restyle a folder of frames",
        description="Unsample a folder of frames to noise, then resample it with a style prompt.",
        argument_default=argparse.SUPPRESS,  # only flags actually given override the job file
    )
    restyle.add_argument(
        "--job", type=Path, action="append", help="a job file (JSON) with any of the settings below; repeat it for "
        "a batch: its events carry the job's index, and the flags below apply to every job"
    )  # fmt: skip
    restyle.add_argument(
        "--cluster", metavar="auto|ADDRESS", default="", help="run on a Ray cluster (needs the cluster extra): "
        "'auto' starts one with every GPU of this machine; else a running cluster's address (head-node:6379, "
        "ray://head-node:10001). One job shares its context windows among the GPUs; a batch runs a job per GPU"
    )  # fmt: skip
    restyle.add_argument(
        "--cluster-workers", type=int, metavar="N", default=0, help="cluster workers (default: one per GPU; one on "
        "a cluster without GPUs)"
    )  # fmt: skip
    _add_cluster_access(restyle)
    restyle.add_argument(
        "--progress", choices=("json", "text", "none"), default="text", help="events on stdout as JSON lines, "
        "a progress bar on stderr, or no progress (default: text); errors and warnings always go to stderr"
    )  # fmt: skip
    restyle.add_argument(
        "--stdin-control", action="store_true", default=False, help="for a program that starts the worker (Blender): "
        "a 'cancel' line on stdin stops the job, and so does stdin closing. Without it stdin is not read"
    )  # fmt: skip
    for spec_field in dataclasses.fields(JobSpec):
        _add_setting(restyle, spec_field)
    restyle.add_argument(
        "--no-cache", action="store_true", default=False, help="keep no unsampled latents (without --cache-dir "
        "they go to the user's cache folder, e.g. ~/.cache/unsample/latents, for later restyles of the same frames)"
    )  # fmt: skip

    doctor = commands.add_parser("doctor", help="print this Python's worker packages and devices as JSON")
    doctor.add_argument(
        "--cluster", metavar="auto|ADDRESS", default="", help="instead: reach this Ray cluster and print its nodes "
        "and GPUs (exit code 12 when it does not answer)"
    )  # fmt: skip
    _add_cluster_access(doctor)
    tiny = commands.add_parser("tiny-models", help="write tiny random-weight models (for tests and the demo)")
    tiny.add_argument("folder", type=Path)
    tiny.add_argument("--family", choices=FAMILIES, default=FAMILIES[0])
    return parser


def _add_setting(parser: argparse.ArgumentParser, spec_field: dataclasses.Field) -> None:
    meta = spec_field.metadata
    flag = meta.get("flag", "--" + spec_field.name.replace("_", "-"))
    default = spec_field.default
    if meta.get("kind") is list:
        parser.add_argument(flag, dest=spec_field.name, action="append", metavar="PATH[=WEIGHT]", help=meta["help"])
        return
    if isinstance(default, bool):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=meta["help"])
        return
    kind = type(default) if default is not None else str
    metavar = None if "choices" in meta else {int: "N", float: "X"}.get(kind, "TEXT")
    help_text = meta["help"] + ("" if default in ("", None) else f" (default: {default})")
    parser.add_argument(flag, type=kind, choices=meta.get("choices"), metavar=metavar, help=help_text)


CLUSTER_FLAGS = ("cluster", "cluster_workers", "cluster_token_file", "cluster_allow_unauthenticated")


def _add_cluster_access(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster-token-file", type=Path, metavar="FILE", default=None, help="the token of the Ray cluster at "
        "--cluster ADDRESS, as 'ray get-auth-token' on its head node prints it (default: Ray's RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token). A cluster that asks for no token is refused"
    )  # fmt: skip
    parser.add_argument(
        "--cluster-allow-unauthenticated", action="store_true", default=False, help="join a Ray cluster that asks "
        "for no token: anyone who can reach it can run code on its machines, and on this job's"
    )  # fmt: skip


def _restyle(args: argparse.Namespace) -> int:
    emit = _emitter(args.progress)
    flags = vars(args).copy()
    for key in ("command", "job", "progress", "no_cache", "stdin_control", *CLUSTER_FLAGS):
        flags.pop(key, None)
    try:
        if args.cluster_workers < 0:
            raise ValueError("--cluster-workers is a count of workers, 0 for one per GPU")
        specs = _job_specs(getattr(args, "job", None) or [None], flags, args.no_cache)
    except ValueError as error:
        return _fail(emit, UnsampleError(ErrorCode.BAD_SETTINGS, f"bad job: {error}"))

    from .job.doctor import missing_packages

    missing = missing_packages()
    if missing:
        return _fail(emit, UnsampleError(ErrorCode.WORKER_SETUP, missing_message(missing)))
    cancel = CancelRequest()
    if args.stdin_control:
        _watch_stdin(cancel)
    try:
        errors = _run_jobs(specs, args, emit, cancel)
    except UnsampleError as error:
        return _fail(emit, error)
    except KeyboardInterrupt:
        return _fail(emit, Cancelled("interrupted (Ctrl+C or SIGINT)"))
    except Exception as error:  # anything else is our bug: report it whole
        return _fail(emit, UnsampleError(ErrorCode.INTERNAL, f"internal error: {error}", traceback.format_exc()))
    failed = [error for error in errors if error is not None]
    return failed[0].code.exit_code if failed else 0


def _job_specs(paths: list[Path | None], flags: dict[str, object], no_cache: bool) -> list[JobSpec]:
    """Every job of the command line; a bad one is named by its file (and its place in a batch)."""
    specs = []
    for index, path in enumerate(paths):
        try:
            specs.append(_job_spec(path, flags, no_cache))
        except ValueError as error:
            where = f"job {index} of {len(paths)} ({path})" if len(paths) > 1 else str(path)
            raise ValueError(f"{where}: {error}" if path else str(error)) from error
    return specs


def _job_spec(path: Path | None, flags: dict[str, object], no_cache: bool) -> JobSpec:
    """One job: its file's settings (if any), then the flags over them."""
    data = _read_job_file(path) if path else {}
    settings = {**data, **flags}
    if no_cache and settings.get("cache_dir"):
        raise ValueError("--no-cache and a cache folder (--cache-dir or the job's cache_dir): choose one")
    if "cache_dir" not in settings:
        # Like the Hugging Face cache: kept by default, so a second style skips the unsample pass.
        settings["cache_dir"] = "" if no_cache else str(default_cache_folder())
    return JobSpec.from_dict(settings)


def _read_job_file(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError("not a job file: it is not UTF-8 text") from None
    except OSError as error:
        raise ValueError(f"cannot read the job file: {error.strerror or error}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError("a job file holds one JSON object")
    return data


def _run_jobs(
    specs: list[JobSpec], args: argparse.Namespace, emit: Callable[[Event], None], cancel: threading.Event
) -> list[UnsampleError | None]:
    """Each job's error or None. Without a cluster, jobs run one after another here; a failed job
    is reported (with its index in a batch) and the next one starts. A cancel stops them all."""
    if args.cluster:
        from .cluster.run import run_on_cluster

        errors = run_on_cluster(specs, args.cluster, args.cluster_workers, emit, cancel, _cluster_access(args))
        if len(specs) == 1 and errors[0] is not None:
            raise errors[0]  # a single job's error is reported as the job's, like without a cluster
        return errors
    from .job.pipeline import restyle
    from .job.progress import BatchProgress

    if len(specs) == 1:
        restyle(specs[0], emit, cancel)
        return [None]
    batch = BatchProgress(emit, len(specs))
    errors: list[UnsampleError | None] = []
    for job, spec in enumerate(specs):
        try:
            restyle(spec, batch.emitter(job), cancel)
            errors.append(None)
        except UnsampleError as error:
            if error.code == ErrorCode.CANCELLED:
                raise
            batch.forward(job, ErrorEvent(code=error.code.value, message=error.message, detail=error.detail))
            errors.append(error)
        batch.finished(job)
    return errors


def _cluster_access(args: argparse.Namespace):  # -> cluster.auth.ClusterAccess: imported only for a cluster
    from .cluster.auth import ClusterAccess

    return ClusterAccess(args.cluster_token_file, args.cluster_allow_unauthenticated)


def _doctor_cluster(args: argparse.Namespace) -> int:
    """Reach the cluster and say what it has, as one JSON object."""
    from .cluster.connect import describe, session

    try:
        with session(args.cluster, _cluster_access(args)) as ray:
            print(json.dumps(describe(ray, args.cluster).report()))
    except UnsampleError as error:
        print(json.dumps({"ok": False, "error": error.message}))  # protocol.CLUSTER_FAILURE_KEYS
        return error.code.exit_code
    return 0


def missing_message(missing: list[str]) -> str:
    return (
        f"the worker Python ({sys.executable}) lacks {', '.join(missing)}: install the extension zip with "
        "the bundled packages, or point the Worker Python preference at an environment that has them"
    )


def _fail(emit: Callable[[Event], None], error: UnsampleError) -> int:
    with contextlib.suppress(Cancelled):  # raised when nobody is left to tell
        emit(ErrorEvent(code=error.code.value, message=error.message, detail=error.detail))
    return error.code.exit_code


def _emitter(mode: str) -> Callable[[Event], None]:
    lock = threading.Lock()
    bar = _TextProgress()

    def emit_json(event: Event) -> None:
        with lock:
            bar.show_problem(event)  # also on stderr: the log of whoever reads the events
            try:
                sys.stdout.write(event_to_json(event) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                # Whoever read the events is gone: stop, and keep Python quiet about stdout at exit.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise Cancelled("the program reading the events went away") from None

    def emit_text(event: Event) -> None:
        with lock:
            bar.show(event)

    def emit_problems(event: Event) -> None:
        with lock:
            bar.show_problem(event)

    return {"json": emit_json, "text": emit_text}.get(mode, emit_problems)


class _TextProgress:
    """One line of progress on stderr, redrawn in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0
        self.drawn = False  # a progress line is on the terminal: a message starts a line of its own

    def show_problem(self, event: Event) -> None:
        """Warnings and errors, one line each; other events are not shown."""
        if not isinstance(event, WarningEvent | ErrorEvent):
            return
        prefix = "warning" if isinstance(event, WarningEvent) else f"error ({event.code})"
        text = f"{prefix}: {event.message}".encode("utf-8", "backslashreplace").decode("utf-8")
        sys.stderr.write(("\n" if self.drawn else "") + text + "\n")
        sys.stderr.flush()
        self.drawn = False

    def show(self, event: Event) -> None:
        if isinstance(event, Progress):
            now = time.monotonic()
            if not self.tty and now - self.last_line < 2.0:
                return
            self.last_line = now
            width = 24
            filled = round(event.fraction * width)
            where = f"{event.stage} {event.step}/{event.total}" if event.total else event.stage
            if event.windows > 1:
                where += f" window {event.window}/{event.windows}"
            eta = "" if event.eta is None else f" ETA {int(event.eta) // 60}:{int(event.eta) % 60:02d}"
            line = f"[{'#' * filled}{'.' * (width - filled)}] {event.fraction:4.0%} {where}{eta}"
            sys.stderr.write(("\r" + line.ljust(79)) if self.tty else line + "\n")
            self.drawn = self.tty
        elif isinstance(event, WarningEvent | ErrorEvent):
            self.show_problem(event)
            return
        elif event.type == "done":
            sys.stderr.write(("\n" if self.drawn else "") + f"done: {event.frames} frames in {event.out}\n")
            self.drawn = False
        sys.stderr.flush()


def _watch_stdin(cancel: CancelRequest) -> None:
    """For the program that started us (``--stdin-control``): a ``cancel`` line or stdin closing
    stops the job."""

    def watch() -> None:
        try:
            for line in sys.stdin:
                if line.strip().lower() == "cancel":
                    cancel.request("cancelled: a 'cancel' line came on stdin")
                    return
        except (OSError, ValueError):
            pass  # unreadable stdin counts as closed
        # End of input: the parent is gone, so nobody is waiting for the result.
        cancel.request("cancelled: stdin closed (the program that started the worker went away)")
        time.sleep(PARENT_GONE_GRACE_SECONDS)
        os._exit(ErrorCode.CANCELLED.exit_code)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _quiet_libraries() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass  # reported properly when the pipeline imports them
