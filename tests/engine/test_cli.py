"""The worker's command line, run as Blender runs it: a subprocess speaking JSON lines."""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_clip
from PIL import Image

from blender_unsample.engine.cli import _parser
from blender_unsample.engine.method.context_windows import context_windows
from blender_unsample.engine.protocol import ErrorCode, JobSpec, Progress, event_from_json

ROOT = Path(__file__).resolve().parents[2]


def worker(*args, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "blender_unsample.engine", *args],
        cwd=ROOT,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def spec_flags(spec: JobSpec) -> list[str]:
    flags = []
    for name in ("frames", "out", "prompt", "model", "motion_adapter", "controlnet", "steps", "context", "overlap",
                 "device"):  # fmt: skip
        flags += ["--" + name.replace("_", "-"), str(getattr(spec, name))]
    return flags


def test_every_job_setting_has_a_flag():
    restyle = _parser()._subparsers._group_actions[0].choices["restyle"]
    destinations = {action.dest for action in restyle._actions if action.option_strings}
    assert {spec_field.name for spec_field in dataclasses.fields(JobSpec)} <= destinations


def test_loras_are_given_by_repeating_the_flag():
    args = _parser().parse_args(["restyle", "--lora", "a.safetensors", "--lora", "b.safetensors=0.5"])
    assert args.loras == ["a.safetensors", "b.safetensors=0.5"]


def test_json_events_parse_and_count_every_step_and_window(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 20)
    spec = tiny_spec(clip)  # context 8, overlap 2 over 20 frames: 3 windows; 3 steps
    process = worker("restyle", *spec_flags(spec), "--progress", "json")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    events = [event_from_json(line) for line in stdout.splitlines()]
    windows = len(context_windows(20, 8, 2))
    # Unsampling refines each step once by default: every window is evaluated twice per step.
    for stage, calls_per_step in (("unsample", 1 + spec.inversion_refinement), ("resample", 1)):
        seen = [(e.step, e.window) for e in events if isinstance(e, Progress) and e.stage == stage]
        expected = [(step, w) for step in (1, 2, 3) for _ in range(calls_per_step) for w in range(1, windows + 1)]
        assert seen == expected
    frames = [e for e in events if e.type == "frame"]
    assert [e.index for e in frames] == list(range(20))
    assert events[-1].type == "done" and events[-1].frames == 20
    assert all(e.type != "done" for e in events[:-1])
    etas = [e.eta for e in events if isinstance(e, Progress) and e.stage == "resample"]
    assert all(eta is not None and eta >= 0 for eta in etas)
    assert max(e.fraction for e in events if isinstance(e, Progress)) <= 1.0


def test_a_job_file_gives_the_settings_and_flags_override_it(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 4)
    job = tmp_path / "job.json"
    job.write_text(tiny_spec(clip, steps=50).to_json())
    process = worker("restyle", "--job", str(job), "--steps", "2", "--progress", "json")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    steps = {e.total for e in map(event_from_json, stdout.splitlines()) if e.type == "progress" and e.windows}
    assert steps == {2}


def test_a_batch_of_job_files_runs_each_and_reports_each_by_its_index(tiny_spec, tmp_path):
    write_clip(tmp_path / "clip", 4)
    missing = tmp_path / "missing.json"
    missing.write_text(tiny_spec(tmp_path / "no-frames", out=str(tmp_path / "o1")).to_json())
    good = tmp_path / "good.json"
    good.write_text(tiny_spec(tmp_path / "clip", out=str(tmp_path / "o2"), steps=50).to_json())
    process = worker("restyle", "--job", str(missing), "--job", str(good), "--steps", "2", "--progress", "json")
    stdout, _ = process.communicate(timeout=300)
    events = [event_from_json(line) for line in stdout.splitlines()]

    assert process.returncode == ErrorCode.BAD_FRAMES.exit_code, "the first failed job's code"
    assert [(e.job, e.code) for e in events if e.type == "error"] == [(0, "bad_frames")]
    assert [(e.job, e.frames) for e in events if e.type == "done"] == [(1, 4)]
    progress = [e for e in events if isinstance(e, Progress)]
    assert {(e.job, e.jobs) for e in progress} == {(1, 2)}
    assert {e.total for e in progress if e.windows} == {2}, "the flags apply to every job"
    assert progress[0].batch_fraction >= 0.5, "a failed job counts as finished for the batch's progress"
    assert len(list((tmp_path / "o2").glob("*.png"))) == 4


def test_errors_come_as_an_event_and_their_own_exit_code(tmp_path):
    process = worker("restyle", "--frames", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--prompt", "x",
                     "--progress", "json")  # fmt: skip
    stdout, _ = process.communicate(timeout=120)
    event = event_from_json(stdout.splitlines()[-1])
    assert (event.type, event.code) == ("error", "bad_frames")
    assert process.returncode == ErrorCode.BAD_FRAMES.exit_code

    bad_job = tmp_path / "job.json"
    bad_job.write_text('{"frames": "in", "stpes": 3}')
    process = worker("restyle", "--job", str(bad_job), "--progress", "json")
    stdout, _ = process.communicate(timeout=120)
    assert "unknown job settings: stpes" in stdout
    assert process.returncode == ErrorCode.BAD_SETTINGS.exit_code


def read_until(process, predicate, timeout=300):
    deadline = time.monotonic() + timeout
    events = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        events.append(event_from_json(line))
        if predicate(events[-1]):
            return events
    raise AssertionError(f"never saw the event; got {events[-3:]}")


@pytest.mark.parametrize("how", ["cancel line", "stdin closed"])
def test_cancel_line_or_closed_stdin_stops_the_worker_without_done(tiny_spec, tmp_path, how):
    clip = tmp_path / "clip"
    write_clip(clip, 12)
    spec = tiny_spec(clip, steps=40)
    process = worker("restyle", *spec_flags(spec), "--progress", "json", "--stdin-control", stdin=subprocess.PIPE)
    events = read_until(process, lambda e: e.type == "progress" and e.stage == "unsample")
    started = time.monotonic()
    if how == "cancel line":
        process.stdin.write("cancel\n")
        process.stdin.flush()
    else:
        process.stdin.close()
    rest = process.stdout.read()
    process.wait(timeout=60)
    stopped_after = time.monotonic() - started
    events += [event_from_json(line) for line in rest.splitlines()]
    assert process.returncode == ErrorCode.CANCELLED.exit_code
    assert stopped_after < 10
    assert not any(e.type == "done" for e in events)
    [error] = [e for e in events if e.type == "error"]
    assert ("'cancel' line" if how == "cancel line" else "stdin closed") in error.message, "it says what cancelled"
    out = Path(spec.out)
    for path in out.iterdir() if out.exists() else []:
        assert not path.name.endswith(".partial"), f"partial file left: {path.name}"
        if not path.name.startswith("."):  # the folder's record of what Unsample wrote there
            Image.open(path).load()


def test_tiny_models_command_writes_loadable_models(tmp_path):
    process = worker("tiny-models", str(tmp_path / "m"))
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    paths = json.loads(stdout)
    assert (Path(paths["checkpoint"]) / "unet" / "config.json").exists()
    assert (Path(paths["motion_adapter"]) / "config.json").exists()


def restyle_events(*args: str, env: dict | None = None) -> list:
    process = subprocess.run(
        [sys.executable, "-m", "blender_unsample.engine", "restyle", *args, "--progress", "json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    return [event_from_json(line) for line in process.stdout.splitlines()]


def test_the_command_line_keeps_unsampled_latents_in_the_users_cache_folder(tiny_spec, tmp_path):
    clip, home = tmp_path / "clip", tmp_path / "home"
    write_clip(clip, 4)
    env = {key: value for key, value in os.environ.items() if key != "XDG_CACHE_HOME"}
    env |= {"HOME": str(home), "HF_HUB_OFFLINE": "1"}
    # The unsample pass has its own prompt, so it stays the same while the style changes.
    flags = [*spec_flags(tiny_spec(clip, steps=2)), "--unsample-prompt", "stripes and a disc"]

    first = restyle_events(*flags, env=env)
    entries = sorted((home / ".cache" / "unsample" / "latents").glob("*.safetensors"))
    assert entries and not first[-1].unsample_cached

    flags[flags.index("--prompt") + 1] = "a watercolour"
    second = restyle_events(*flags, env=env)
    assert second[-1].unsample_cached  # a new style skipped the unsample pass
    assert not [e for e in second if isinstance(e, Progress) and e.stage == "unsample"]

    kept = sorted((home / ".cache" / "unsample" / "latents").glob("*"))
    flags[flags.index("--prompt") + 1] = "a charcoal drawing"
    third = restyle_events(*flags, "--no-cache", env=env)
    assert not third[-1].unsample_cached
    assert sorted((home / ".cache" / "unsample" / "latents").glob("*")) == kept  # nothing read or written


def test_no_cache_and_a_cache_folder_together_are_refused(tmp_path):
    process = worker("restyle", "--frames", str(tmp_path), "--out", str(tmp_path / "o"), "--prompt", "x",
                     "--cache-dir", str(tmp_path / "c"), "--no-cache", "--progress", "json")  # fmt: skip
    stdout, _ = process.communicate(timeout=120)
    error = event_from_json(stdout.splitlines()[-1])
    assert process.returncode == ErrorCode.BAD_SETTINGS.exit_code and "--no-cache" in error.message
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("platform", "environ", "expected"),
    [
        ("linux", {"HOME": "/home/ana"}, "/home/ana/.cache/unsample/latents"),
        ("linux", {"HOME": "/home/ana", "XDG_CACHE_HOME": "/scratch/cache"}, "/scratch/cache/unsample/latents"),
        ("darwin", {"HOME": "/Users/ana"}, "/Users/ana/Library/Caches/unsample/latents"),
        ("win32", {"HOME": "C:/Users/ana", "LOCALAPPDATA": "D:/Local"}, "D:/Local/unsample/latents"),
    ],
)
def test_the_default_cache_folder_is_where_each_platform_keeps_caches(platform, environ, expected):
    from blender_unsample.engine.protocol import default_cache_folder

    assert default_cache_folder(platform, environ) == Path(expected)


def test_a_shell_loop_runs_every_folder_of_its_list(tiny_spec, tmp_path):
    """`cat list | while read d; do restyle --frames "$d" ...; done`: the worker must not read the loop's
    stdin (only a parent that asks for it, with --stdin-control, gets a control channel)."""
    folders = [tmp_path / f"shot {i}" for i in range(3)]
    for folder in folders:
        write_clip(folder, 2)
    (tmp_path / "folders.txt").write_text("".join(f"{f}\n" for f in folders), encoding="utf-8")
    spec = tiny_spec(folders[0], steps=1, context=2, overlap=0, control="none")
    restyle = [sys.executable, "-m", "blender_unsample.engine", "restyle", "--prompt", "ink", "--model", spec.model,
               "--motion-adapter", spec.motion_adapter, "--control", "none", "--steps", "1", "--context", "2",
               "--overlap", "0", "--device", "cpu", "--progress", "none"]  # fmt: skip
    command = " ".join(map(shlex.quote, restyle))
    script = f'cat folders.txt | while read -r d; do {command} --frames "$d" --out "$d-out" || exit $?; done'
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for folder in folders:
        assert len(list(Path(f"{folder}-out").glob("*.png"))) == 2, f"{folder.name} was not restyled"


@pytest.mark.parametrize("progress", ["none", "json", "text"])
def test_errors_and_warnings_reach_stderr_whatever_the_progress_mode(tmp_path, progress):
    clip = tmp_path / "clip"
    write_clip(clip, 2, size=(66, 48))  # not a multiple of 8: a warning, before the model fails to load
    process = worker("restyle", "--frames", str(clip), "--out", str(tmp_path / "o"), "--prompt", "x",
                     "--model", str(tmp_path / "no-such-model"), "--no-cache", "--progress", progress)  # fmt: skip
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == ErrorCode.MODEL_NOT_FOUND.exit_code
    assert "warning: frames are 66x48; processing at 64x48" in stderr
    assert stderr.count("error (model_not_found):") == 1 and "no-such-model" in stderr


def test_a_bad_job_file_of_a_batch_is_named(tmp_path):
    good, broken = tmp_path / "good.json", tmp_path / "broken.json"
    good.write_text(json.dumps({"frames": str(tmp_path), "out": str(tmp_path / "o"), "prompt": "ink"}))
    broken.write_text('{"frames": "in",')  # cut short
    process = worker("restyle", "--job", str(good), "--job", str(broken), "--progress", "json")
    stdout, _ = process.communicate(timeout=120)
    error = event_from_json(stdout.splitlines()[-1])
    assert process.returncode == ErrorCode.BAD_SETTINGS.exit_code
    assert f"job 1 of 2 ({broken})" in error.message and "not valid JSON" in error.message
