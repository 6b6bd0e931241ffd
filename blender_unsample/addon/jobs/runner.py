"""The batch of strip jobs, moved forward in short steps on Blender's main thread.

:meth:`Runner.tick` does a bounded slice of work (render a few frames, apply the worker's
events, import a finished result) and returns; the modal operator calls it from a timer, the
blocking path of the operators calls it in a loop. Heavy work happens in the worker process.

Without the Cluster preference each strip is exported, then restyled by a worker of its own, one
after another. With it, a batch's strips are all exported first, then run at once on one worker
(:mod:`.cluster_batch`); a single strip gets ``--cluster`` on its own worker.
"""

from __future__ import annotations

import collections
import contextlib
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from ...engine.protocol import Done, ErrorCode, ErrorEvent, FrameWritten, JobSpec, Progress, WarningEvent
from .. import prefs as looked_up
from ..prefs import GPU_MEMORY_OPTIONS, cache_root, cluster_token_file, latent_cache_folder, preferences, worker_python
from ..properties import job_spec, processing_size
from ..worker.cluster import cluster_arguments, cluster_choice, setup_hint
from ..worker.process import Worker
from .cluster_batch import ClusterBatch
from .export_process import ExportProcess, JobError, failure_text
from .paths import new_run_folder, strip_folder
from .strips import (
    StripRef,
    add_result_strip,
    channel_problem,
    remove_previews,
    restylable_reason,
    select_only,
)

EVENTS_PER_TICK = 200
CANCEL_GRACE = 10.0  # seconds a cancelled worker gets before it is killed
CLUSTER_CANCEL_GRACE = 30.0  # a worker on a cluster also stops its cluster workers (and a local Ray)
EXPORT_SHARE = 0.05  # of a strip's progress bar
# A worker's errors that its settings caused (a checkpoint that is not there, the wrong family): Resume
# runs the job file's settings again, so only fixing the setting and restyling helps.
SETTINGS_ERRORS = {
    ErrorCode.MODEL_NOT_FOUND.value,
    ErrorCode.MODEL_INVALID.value,
    ErrorCode.MODEL_MISMATCH.value,
    ErrorCode.BAD_SETTINGS.value,
}
# One for each of the worker's stages, protocol.STAGES (tests/engine/test_shared_facts.py checks).
STAGE_TEXT = {
    "load": "Loading models",
    "download": "Downloading models (files)",
    "encode": "Encoding frames",
    "unsample": "Unsampling",
    "resample": "Restyling",
    "decode": "Decoding frames",
}


@dataclass
class StripJob:
    ref: StripRef
    frames: range  # scene frames to restyle
    preview: bool
    run_dir: Path
    exporter: ExportProcess | None = None
    worker: Worker | None = None
    spec: JobSpec | None = None
    done: Done | None = None
    error: ErrorEvent | None = None
    warnings: list[str] = field(default_factory=list)
    cancel_sent_at: float | None = None
    resume: bool = False  # run again in its own folder, reusing what the earlier run left
    started: bool = False
    position: int = 0  # 1-based place in the batch, as the panel counts strips

    @property
    def frames_dir(self) -> Path:
        return self.run_dir / "frames"

    @property
    def out_dir(self) -> Path:
        return self.run_dir / "out"


@dataclass
class Outcome:
    strip: str
    ok: bool
    message: str
    warning: bool = False  # added, but with something the user should know (the source was edited)


class Runner:
    """One batch at a time: strips wait in a queue and run one after another (one worker), or with
    Cluster on, are exported one after another and then run at once (one worker for them all)."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.queue: collections.deque[StripJob] = collections.deque()
        self.current: StripJob | None = None
        self.parked: list[StripJob] = []  # exported, waiting for the batch's other strips (Cluster on)
        self.cluster_batch: ClusterBatch | None = None  # the parked strips, at once on one worker
        self.cluster: list[str] = []  # the worker's --cluster arguments for this batch (none: no cluster)
        self.outcomes: list[Outcome] = []
        self.added: list[str] = []  # names of the strips this batch added
        self.resumable: list[StripJob] = []  # failed or cancelled in this batch, their folders kept
        self.longest_tick = 0.0
        self.batch_size = 0
        self.cancelled = False
        # A file's failed or cancelled strips and its job box (status, message) while another file is
        # open, by the file's path: opening it again offers their Resume there, and nowhere else.
        self.left: dict[str, tuple[str, str, list[StripJob]]] = {}
        self.stopped_by_load = ""  # what the job box says once the file has loaded: the batch it stopped

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.queue) or bool(self.parked) or self.cluster_batch is not None

    def enqueue(self, scene: bpy.types.Scene, strips: list, preview: bool = False) -> int:
        """Queue ``strips`` of ``scene``; returns how many were queued."""
        if not self.busy:
            self._new_batch()
        root = cache_root()
        jobs = []
        for strip in strips:  # all job folders first: if one cannot be made, nothing is queued
            frames = frames_to_restyle(scene, strip, preview)
            folder = strip_folder(root, bpy.data.filepath, scene.name, strip.name)
            run_dir = new_run_folder(folder, "preview" if preview else "restyle")
            jobs.append(StripJob(StripRef.of(scene, strip), frames, preview, run_dir))
        self.queue.extend(jobs)
        self.batch_size += len(strips)
        _state().status = "EXPORTING"
        return len(strips)

    def _new_batch(self) -> None:
        self.outcomes, self.added, self.resumable, self.batch_size, self.cancelled = [], [], [], 0, False
        prefs = preferences()  # read once a batch: the whole batch runs on the same cluster, or none
        self.cluster = cluster_arguments(cluster_choice(prefs, cluster_token_file()))

    def resume(self) -> int:
        """Queue the last batch's failed or cancelled strips again, each in its own job folder."""
        jobs = [job for job in self.resumable if job.run_dir.is_dir()]
        if not self.busy:
            self._new_batch()
        for job in jobs:
            job.resume, job.started = True, False
            self.queue.append(job)
        self.batch_size += len(jobs)
        if jobs:
            _state().status = "EXPORTING"
        return len(jobs)

    def cancel(self) -> None:
        """Stop the running strip and drop the rest of the batch; nothing is imported."""
        self.cancelled = True
        waiting = [*self.parked, *self.queue]
        for job in waiting:
            self.outcomes.append(Outcome(job.ref.name, False, "cancelled before it started"))
        self.resumable.extend(waiting)
        self.queue.clear()
        self.parked.clear()
        if self.cluster_batch is not None:
            self.cluster_batch.cancel()
            return
        job = self.current
        if job is None:
            return
        if job.worker is not None:
            job.worker.cancel()
            job.cancel_sent_at = time.monotonic()
        else:
            self._finish(job, False, "cancelled")

    def abandon(self, why: str) -> list[StripJob]:
        """Stop the batch now, for good, where no tick may come again to finish a cancel (another
        file is being opened, the add-on is being disabled): the export is stopped, each worker is
        told to stop and killed on a thread if it has not after its grace, nothing more is added.
        Returns the strips stopped, each with the outcome "cancelled because ``why``"; their folders
        are kept, and they can be resumed."""
        stopped = []
        if self.cluster_batch is not None:
            batch, self.cluster_batch = self.cluster_batch, None
            stopped += [batch.jobs[index] for index in sorted(batch.open)]
            _stop_in_background(batch.worker, CLUSTER_CANCEL_GRACE)
        job, self.current = self.current, None
        if job is not None:
            if job.exporter is not None:
                job.exporter.close()
                job.exporter = None
            if job.worker is not None:
                _stop_in_background(job.worker, CLUSTER_CANCEL_GRACE if self._cluster_for(job) else CANCEL_GRACE)
                job.worker = None
            stopped.append(job)
        stopped += [*self.parked, *self.queue]
        self.parked.clear()
        self.queue.clear()
        for job in stopped:
            self.outcomes.append(Outcome(job.ref.name, False, f"cancelled because {why}"))
        self.resumable.extend(stopped)
        self.cancelled = self.cancelled or bool(stopped)
        return stopped

    def file_loading(self, new_path: str) -> None:
        """Another file (or this one, again) is about to replace the data the batch works on: a job
        belongs to the file it started in, so it stops here, its folder kept, and its Resume waits
        until that file is open again (one never saved cannot be opened again)."""
        old = bpy.data.filepath
        again = bool(old and new_path) and Path(new_path).resolve() == Path(old).resolve()
        why = "the file was opened again" if again else "another file was opened"
        stopped = self.abandon(why)
        status, message = _job_box()
        if stopped:
            status, message = "CANCELLED", _stopped_text(stopped, why, "" if again else old)
            print(f"Unsample: {message}")  # the operator that would report it went with the old file
        if old and self.resumable:
            self.left[old] = (status, message, self.resumable)
        self.stopped_by_load = message if stopped else ""
        self.outcomes, self.added, self.resumable, self.batch_size = [], [], [], 0

    def file_loaded(self) -> None:
        """The new file is open: its job box shows the batch the load stopped, or its own last batch
        (with Resume) if it was open earlier in this session, or nothing."""
        path = bpy.data.filepath
        status, message, self.resumable = self.left.pop(path, ("IDLE", "", [])) if path else ("IDLE", "", [])
        if self.stopped_by_load:
            status, message = "CANCELLED", self.stopped_by_load
        self.stopped_by_load = ""
        state = _state_if_any()
        if state is not None:
            state.status, state.message, state.stage, state.log_tail = status, message, "", ""

    def shut_down(self) -> None:
        """The add-on is being disabled: stop the batch and forget it, so that nothing of it comes
        back once the add-on is enabled again (its folders stay on disk)."""
        self.abandon("the add-on was disabled")
        self._clear()
        state = _state_if_any()
        if state is not None:
            state.status, state.message, state.stage, state.log_tail = "IDLE", "", "", ""

    def tick(self) -> bool:
        """Move the batch on by one short step of main-thread work; False once it is over."""
        started = time.perf_counter()
        try:
            if self.cluster_batch is not None:
                self._follow_cluster_batch()
            elif self.current is None and not self.queue and self.parked:
                self._start_parked()
            else:
                if self.current is None and self.queue:
                    self.current = self.queue.popleft()
                job = self.current
                if job is not None:
                    try:
                        self._advance(job)
                    except Exception as error:  # a failed strip must not take the batch down
                        self._finish(job, False, _describe(error))
            if not self.busy:
                self._end_batch()
            return self.busy
        finally:
            self.longest_tick = max(self.longest_tick, time.perf_counter() - started)

    # --- one strip ---------------------------------------------------------------------------------

    def _begin(self, job: StripJob) -> None:
        state = _state()
        state.strip_name = job.ref.name
        job.position = len(self.outcomes) + len(self.parked) + 1
        state.strip_index = job.position
        state.strip_count = self.batch_size
        state.progress, state.eta, state.frames_done = 0.0, -1.0, 0
        state.frames_total = len(job.frames)
        state.status = "EXPORTING"
        state.log_tail = ""
        try:
            scene, strip = job.ref.find()
        except LookupError as error:
            raise JobError(f"{error} before its turn: nothing was restyled") from error
        placement = channel_problem(scene, strip, job.frames)  # checked before the work, not after it
        if placement and job.resume:
            raise JobError(f"{placement}, then press Resume. Nothing was added; the styled frames are in {job.out_dir}")
        if placement:
            raise JobError(f"{placement}. Nothing was restyled")
        job.done, job.error, job.warnings, job.cancel_sent_at = None, None, [], None
        exported = sorted(job.frames_dir.glob("frame_*.png"))
        job_file = job.run_dir / "job.json"
        if job.resume and job_file.is_file() and len(exported) == len(job.frames):
            # A resumed job's frames and settings are all there: straight to the worker, which
            # reuses what its earlier run left (cached latents, frames it wrote).
            job.spec = JobSpec.from_dict(json.loads(job_file.read_text(encoding="utf-8")))
            self._exported(job)
        else:
            self._start_export(job, scene, strip)

    def _start_export(self, job: StripJob, scene: bpy.types.Scene, strip: bpy.types.Sequence) -> None:
        problem = restylable_reason(strip)  # its media may have gone since it was queued
        if problem:
            raise JobError(f"{problem}: nothing was restyled")
        size = processing_size(scene.unsample, scene)
        prefs = preferences()
        models_folder = prefs.models_folder if prefs else ""
        job.spec = job_spec(
            scene.unsample, str(job.frames_dir), str(job.out_dir), size, models_folder, **_preference_overrides(job)
        )
        job.ref = StripRef.of(scene, strip)  # as exported now: edits from here on are noticed at import
        job.exporter = ExportProcess(scene, strip, job.frames, job.frames_dir, size)

    def _advance(self, job: StripJob) -> None:
        if not job.started:
            job.started = True
            self._begin(job)
        elif job.exporter is not None:
            self._export(job)
        elif job.worker is not None:
            self._follow_worker(job)
        else:  # never left without a next step: that would tick forever
            raise RuntimeError("the job has nothing left to run")

    def _export(self, job: StripJob) -> None:
        exporter = job.exporter
        try:
            exporter.poll()
        except Exception:
            exporter.close()
            job.exporter = None
            raise
        state = _state()
        state.stage = f"Exporting frames {len(exporter.paths)}/{len(job.frames)}"
        state.progress = EXPORT_SHARE * len(exporter.paths) / len(job.frames)
        if not exporter.done:
            return
        exporter.close()
        job.exporter = None
        (job.run_dir / "job.json").write_text(job.spec.to_json(), encoding="utf-8")
        self._exported(job)

    def _exported(self, job: StripJob) -> None:
        """The strip's frames and job file are there: its worker starts, or with Cluster on and more
        strips in the batch it waits for them, to run with them at once."""
        if self.cluster and not job.preview and (self.queue or self.parked):
            self.parked.append(job)
            self.current = None
            _state().stage = "Frames exported, waiting for the batch's other strips"
        else:
            self._start_worker(job)

    def _cluster_for(self, job: StripJob) -> list[str]:
        # A preview is one context window, nothing to share among GPUs: a cluster would only add its start-up.
        return [] if job.preview else self.cluster

    def _start_worker(self, job: StripJob) -> None:
        job.worker = _start(
            ["--job", str(job.run_dir / "job.json"), *self._cluster_for(job)], job.run_dir / "worker.log"
        )
        state = _state()
        state.status = "RUNNING"
        state.stage = STAGE_TEXT["load"]

    def _follow_worker(self, job: StripJob) -> None:
        worker = job.worker
        for event in worker.take_events(EVENTS_PER_TICK):
            self._apply(job, event)
        grace = CLUSTER_CANCEL_GRACE if self._cluster_for(job) else CANCEL_GRACE
        if job.cancel_sent_at is not None and time.monotonic() - job.cancel_sent_at > grace:
            worker.kill()
        if not worker.finished():
            return
        _state().log_tail = worker.log_tail()
        if job.cancel_sent_at is not None:
            self._finish(job, False, "cancelled")
        elif job.done is not None and worker.exit_code == 0:
            self._import(job)
        else:
            error = job.error or worker.failure()
            self._finish(job, False, failure_message(error), resumable=error.code not in SETTINGS_ERRORS)

    def _apply(self, job: StripJob, event: object) -> None:
        state = _state()
        if isinstance(event, Progress):
            state.progress = EXPORT_SHARE + (1 - EXPORT_SHARE) * event.fraction
            state.eta = -1.0 if event.eta is None else event.eta
            state.frames_done = event.frames_done
            state.stage = stage_text(event)
        elif isinstance(event, FrameWritten):
            state.frames_done = event.index + 1
        elif isinstance(event, WarningEvent):
            job.warnings.append(event.message)
        elif isinstance(event, ErrorEvent):
            job.error = event
        elif isinstance(event, Done):
            job.done = event

    def _import(self, job: StripJob) -> None:
        names = sorted(p.name for p in job.frames_dir.glob("frame_*.png"))
        frames = [job.out_dir / name for name in names]
        missing = [f.name for f in frames if not f.is_file()]
        if missing or not frames:
            self._finish(job, False, f"the worker reported done but {len(missing)} frames are missing")
            return
        try:
            scene, source = job.ref.find()
        except LookupError as error:
            where = f"nothing was added; the styled frames are in {job.out_dir}"
            self._finish(job, False, f"{error} while it was being restyled: {where}")
            return
        placement = channel_problem(scene, source, job.frames)  # the timeline changed during the job
        if placement:
            where = f"Nothing was added; the styled frames are in {job.out_dir}"
            self._finish(job, False, f"{placement}, then press Resume. {where}")
            return
        edited = job.ref.edited(source)
        remove_previews(scene, job.ref.name)
        remove_previews(scene, source.name)  # renamed meanwhile
        strip = add_result_strip(scene, source, frames, job.frames.start, job.spec.to_json(), job.preview)
        self.added.append(strip.name)
        select_only(scene, set(self.added), strip.name)  # the batch's results, the newest active
        _push_undo(f"Unsample: add {strip.name}")
        message = f"added '{strip.name}' on channel {strip.channel}"
        if job.done.frames_reused:
            message += f", resumed with {job.done.frames_reused} frames already made"
        elif job.done.unsample_cached:
            message += ", its unsample pass taken from the cache"
        if job.warnings:
            message += f" ({len(job.warnings)} warnings: {job.warnings[-1]})"
        if edited:
            message += (
                ". The strip was edited while it was being restyled: the new strip shows it as it was "
                "when its frames were exported; Restyle again to pick up the edits"
            )
        self._finish(job, True, message, warning=edited)

    def _finish(self, job: StripJob, ok: bool, message: str, warning: bool = False, resumable: bool = True) -> None:
        if job.exporter is not None:
            job.exporter.close()
            job.exporter = None
        if job.worker is not None:
            job.worker.kill()
            job.worker = None
        if not ok and resumable:
            self.resumable.append(job)  # its folder is kept: Resume runs it again there
        self.outcomes.append(Outcome(job.ref.name, ok, message, warning))
        _state().message = f"{job.ref.name}: {message}"
        if self.current is job:
            self.current = None

    # --- several strips at once on a cluster ---------------------------------------------------------

    def _start_parked(self) -> None:
        jobs, self.parked = self.parked, []
        if len(jobs) == 1:  # the batch's other strips failed before their export ended
            self.current = jobs[0]
            try:
                self._start_worker(jobs[0])
            except Exception as error:
                self._finish(jobs[0], False, _describe(error))
            return
        arguments = [a for job in jobs for a in ("--job", str(job.run_dir / "job.json"))]
        try:
            worker = _start([*arguments, *self.cluster], jobs[0].run_dir / "worker.log")
        except JobError as error:
            for job in jobs:
                self._finish(job, False, str(error))
            return
        self.cluster_batch = ClusterBatch(
            jobs, worker, self._show_cluster_progress, self._cluster_done, self._cluster_failed
        )
        state = _state()
        state.status, state.stage, state.progress, state.eta = "RUNNING", STAGE_TEXT["load"], EXPORT_SHARE, -1.0
        state.strip_name, state.strip_index = jobs[0].ref.name, jobs[0].position
        state.cluster_strips, state.cluster_done = len(jobs), 0
        state.frames_done, state.frames_total = 0, sum(len(job.frames) for job in jobs)

    def _follow_cluster_batch(self) -> None:
        batch = self.cluster_batch
        over = batch.tick(EVENTS_PER_TICK, CLUSTER_CANCEL_GRACE)
        state = _state()
        state.cluster_done = batch.finished_strips
        state.frames_done = sum(batch.frames_done)
        if over:
            state.log_tail = batch.worker.log_tail()
            state.cluster_strips = 0
            self.cluster_batch = None

    def _show_cluster_progress(self, job: StripJob, event: Progress) -> None:
        state = _state()
        state.strip_name, state.strip_index = job.ref.name, job.position
        state.progress = EXPORT_SHARE + (1 - EXPORT_SHARE) * event.batch_fraction
        state.eta = -1.0 if event.batch_eta is None else event.batch_eta
        state.stage = stage_text(event)

    def _cluster_done(self, job: StripJob, done: Done) -> None:
        try:
            self._import(job)
        except Exception as error:  # one strip's import must not take the others down
            self._finish(job, False, _describe(error))

    def _cluster_failed(self, job: StripJob, error: ErrorEvent | None) -> None:
        if error is None:
            self._finish(job, False, "cancelled")
        else:
            self._finish(job, False, failure_message(error), resumable=error.code not in SETTINGS_ERRORS)

    def _end_batch(self) -> None:
        state = _state()
        if state.status in {"FINISHED", "FAILED", "CANCELLED", "IDLE"}:
            return
        failed = [o for o in self.outcomes if not o.ok]
        state.status = "CANCELLED" if self.cancelled else "FAILED" if failed else "FINISHED"
        state.cluster_strips = 0
        state.progress = 1.0 if not failed else state.progress
        state.eta = -1.0
        state.stage = ""
        if len(self.outcomes) > 1:
            state.message = f"{len(self.outcomes) - len(failed)} of {len(self.outcomes)} strips restyled" + (
                f"; {failed[0].strip}: {failed[0].message}" if failed else ""
            )


def stage_text(event: Progress) -> str:
    """What the worker is doing, for the progress bar."""
    text = STAGE_TEXT.get(event.stage, event.stage)
    if event.windows:
        text += f": step {event.step}/{event.total}"
        if event.windows > 1:
            text += f", window {event.window}/{event.windows}"
    elif event.total:
        text += f" {event.step}/{event.total}"
    return text


def failure_message(error: ErrorEvent) -> str:
    """A worker's error for the panel and the report, with where to fix it where that is a preference."""
    where = {
        ErrorCode.OUT_OF_MEMORY.value: " (GPU memory options: Preferences > Add-ons > Unsample)",
        ErrorCode.CLUSTER.value: " (the Cluster preference: Preferences > Add-ons > Unsample)",
    }.get(error.code, "")
    if error.code == ErrorCode.WORKER_SETUP.value:
        where = setup_hint(error.message)
    elif error.code in SETTINGS_ERRORS:
        where = (
            " (fix the setting it names in the Unsample panel or the add-on's preferences, then press Restyle: "
            "Resume would run the same settings again)"
        )
    return f"{error.message}{where} [{error.code}]"


def _start(job_arguments: list[str], log: Path) -> Worker:
    """A worker for ``restyle`` with these job files (and cluster), events as JSON lines."""
    python = worker_python()
    try:
        return Worker(python, ["restyle", *job_arguments, "--progress", "json", "--stdin-control"], log)
    except OSError as error:
        raise JobError(
            f"cannot start the worker Python {python} ({error.strerror or error}): check the Worker Python preference"
        ) from error


def _describe(error: Exception) -> str:
    """What went wrong, for the panel and the report."""
    if isinstance(error, JobError):
        return str(error)  # written for the user already
    return failure_text(error)


def _state() -> bpy.types.PropertyGroup:
    return bpy.context.window_manager.unsample


def _state_if_any() -> bpy.types.PropertyGroup | None:
    """The job state, or None where there is no window manager to hold it (Blender quitting, say)."""
    manager = bpy.context.window_manager
    return getattr(manager, "unsample", None) if manager else None


def _job_box() -> tuple[str, str]:
    """The job box's status and message now."""
    state = _state_if_any()
    return (state.status, state.message) if state is not None else ("IDLE", "")


def _stopped_text(stopped: list[StripJob], why: str, blend: str) -> str:
    """The job box's words for strips that a file load stopped; ``blend``, the file to open again to
    resume them, if another."""
    names = f"'{stopped[0].ref.name}'" + (f" and {len(stopped) - 1} more strips" if len(stopped) > 1 else "")
    text = f"{names}: cancelled because {why}: nothing was added; the job folder is kept: {stopped[0].run_dir}"
    return text + (f" (open {Path(blend).name} again to Resume)" if blend else "")


def _stop_in_background(worker: Worker, grace: float) -> None:
    """Tell ``worker`` to stop and kill it if it has not after ``grace`` seconds, on a thread: no tick
    comes to do it once the file is gone or the add-on is off, and the main thread must not wait."""
    worker.cancel()

    def kill_after_grace() -> None:
        try:
            worker.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            worker.kill()

    threading.Thread(target=kill_after_grace, name="unsample-stop-worker", daemon=True).start()


def _push_undo(message: str) -> None:
    with contextlib.suppress(RuntimeError):  # no undo stack (background mode): nothing to record
        bpy.ops.ed.undo_push(message=message)


def strip_problem(scene: bpy.types.Scene, strip: bpy.types.Sequence | None, preview: bool = False) -> str | None:
    """Why ``strip`` cannot be restyled now, for the greyed-out button, the panel and a batch's
    warning: it has no pixels or media, or its result would find no channel above it."""
    problem = restylable_reason(strip)
    if problem:
        return problem
    return channel_problem(scene, strip, frames_to_restyle(scene, strip, preview))


def frames_to_restyle(scene: bpy.types.Scene, strip: bpy.types.Sequence, preview: bool) -> range:
    """The scene frames a restyle (or a preview) of ``strip`` covers."""
    start, end = strip.frame_final_start, strip.frame_final_end
    if not (preview or scene.unsample.frame_range == "PLAYHEAD"):
        return range(start, end)
    if preview and scene.use_preview_range:
        # The scene's preview range (Alt+P in the timeline) is the chosen range, where it meets the strip.
        chosen = range(max(start, scene.frame_preview_start), min(end, scene.frame_preview_end + 1))
        if len(chosen) > 0:
            return chosen
    # One context window around the playhead, kept inside the strip.
    length = min(scene.unsample.context, end - start)
    first = min(max(start, scene.frame_current - length // 2), end - length)
    return range(first, first + length)


def _preference_overrides(job: StripJob) -> dict[str, object]:
    prefs = preferences()
    online = looked_up.online_access()  # looked up at call time: tests stand in for Blender's setting
    return {
        "device": prefs.device if prefs else "auto",
        "allow_download": bool(prefs and prefs.allow_downloads and online),
        "work_dir": str(job.run_dir / "work"),
        "cache_dir": str(latent_cache_folder()),
        "cache_limit_mb": round((prefs.cache_limit_gb if prefs else 4.0) * 1024),
        **{name: getattr(prefs, name) for name in GPU_MEMORY_OPTIONS if prefs},
    }


RUNNER = Runner()


@bpy.app.handlers.persistent
def _on_load_pre(filepath: str = "", *_args: object) -> None:
    RUNNER.file_loading(filepath if isinstance(filepath, str) else "")


@bpy.app.handlers.persistent
def _on_load_post(*_args: object) -> None:
    RUNNER.file_loaded()


# A failed load leaves the old file open: its job box and Resume come back as after any load.
_HANDLERS = (("load_pre", _on_load_pre), ("load_post", _on_load_post), ("load_post_fail", _on_load_post))


def register_handlers() -> None:
    """Persistent: they must outlive every file load they are there for."""
    unregister_handlers()
    for event, handler in _HANDLERS:
        if hasattr(bpy.app.handlers, event):
            getattr(bpy.app.handlers, event).append(handler)


def unregister_handlers() -> None:
    for event, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, event, [])
        # By name too: a reloaded module's handlers are other function objects.
        for registered in [h for h in handlers if (h.__module__, h.__name__) == (handler.__module__, handler.__name__)]:
            handlers.remove(registered)
