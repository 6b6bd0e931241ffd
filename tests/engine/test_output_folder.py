"""The output folder: one job at a time, nothing of the user's overwritten, stray frames told of."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_clip
from PIL import Image

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.job.output import LOCK_NAME, MANIFEST_NAME
from blender_unsample.engine.job.pipeline import restyle
from blender_unsample.engine.protocol import Done, ErrorCode, WarningEvent, event_from_json

ROOT = Path(__file__).resolve().parents[2]


def run(spec) -> list:
    events = []
    restyle(spec, events.append)
    return events


def fail(spec) -> UnsampleError:
    with pytest.raises(UnsampleError) as error:
        restyle(spec, lambda event: None)
    return error.value


def test_a_second_job_into_the_same_output_folder_fails_at_once_naming_the_first(tiny_spec, tmp_path):
    first, second = tmp_path / "first shot", tmp_path / "second shot"
    write_clip(first, 12)
    write_clip(second, 4)
    out = tmp_path / "out"
    spec = tiny_spec(first, out=str(out), steps=40, control="none")
    job = json.loads(spec.to_json())
    (tmp_path / "first.json").write_text(json.dumps(job))
    running = subprocess.Popen(
        [sys.executable, "-m", "blender_unsample.engine", "restyle", "--job", str(tmp_path / "first.json"),
         "--no-cache", "--progress", "json", "--stdin-control"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for line in running.stdout:  # until it samples: it holds the folder
            if event_from_json(line).type == "progress" and "sample" in event_from_json(line).stage:
                break
        started = time.monotonic()
        error = fail(tiny_spec(second, out=str(out), control="none"))
        assert time.monotonic() - started < 10, "at once, before any model loads"
        assert error.code is ErrorCode.OUTPUT_IN_USE
        assert f"process {running.pid}" in error.message and str(first) in error.message, error.message
    finally:
        running.stdin.write("cancel\n")
        running.stdin.close()
        running.wait(timeout=60)
    assert not (out / LOCK_NAME).exists(), "the lock goes with the job"
    assert run(tiny_spec(second, out=str(out), control="none"))[-1].frames == 4, "free once the first has ended"


def test_a_lock_left_by_a_job_that_died_is_taken_over(tiny_spec, tmp_path):
    write_clip(tmp_path / "clip", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(' {"pid": 999999, "host": "gone", "frames": "/x", "since": 0}')  # nobody holds it
    assert isinstance(run(tiny_spec(tmp_path / "clip", out=str(out), control="none"))[-1], Done)


def test_a_users_file_under_a_frame_name_is_never_overwritten(tiny_spec, tmp_path):
    write_clip(tmp_path / "clip", 3)
    out = tmp_path / "out"
    out.mkdir()
    mine = Image.new("RGB", (10, 10), (255, 0, 0))
    mine.save(out / "frame_0002.png")
    before = (out / "frame_0002.png").read_bytes()
    error = fail(tiny_spec(tmp_path / "clip", out=str(out), control="none"))
    assert error.code is ErrorCode.OUTPUT_NOT_WRITABLE
    assert "frame_0002.png" in error.message and "Unsample did not write" in error.message
    assert (out / "frame_0002.png").read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["frame_0002.png"], "no work done"


def test_a_run_again_into_its_own_folder_overwrites_only_its_own_frames(tiny_spec, tmp_path):
    write_clip(tmp_path / "clip", 3)
    out = str(tmp_path / "out")
    run(tiny_spec(tmp_path / "clip", out=out, prompt="ink", control="none"))
    again = run(tiny_spec(tmp_path / "clip", out=out, prompt="oil", control="none"))
    assert isinstance(again[-1], Done) and not [e for e in again if isinstance(e, WarningEvent)]
    run(tiny_spec(tmp_path / "clip", out=str(tmp_path / "clean"), prompt="oil", control="none"))
    for name in ("frame_0001.png", "frame_0002.png", "frame_0003.png"):
        clean = np.asarray(Image.open(tmp_path / "clean" / name))
        np.testing.assert_array_equal(np.asarray(Image.open(Path(out) / name)), clean)


def test_frames_of_an_earlier_longer_run_are_left_but_the_user_is_told(tiny_spec, tmp_path):
    write_clip(tmp_path / "long", 6)
    write_clip(tmp_path / "short", 3)
    out = tmp_path / "out"
    run(tiny_spec(tmp_path / "long", out=str(out), control="none"))
    events = run(tiny_spec(tmp_path / "short", out=str(out), control="none"))
    [warning] = [e.message for e in events if isinstance(e, WarningEvent)]
    assert "3 files (frame_0004.png, frame_0005.png, frame_0006.png)" in warning, warning
    assert "not this clip alone" in warning
    assert len(list(out.glob("frame_*.png"))) == 6, "nothing deleted that this job did not write"
    assert json.loads((out / MANIFEST_NAME).read_text())["written"] == [f"frame_000{i}.png" for i in range(1, 7)]


def test_frame_names_near_the_file_systems_limit_are_written(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    names = [f"{'x' * 240}_{i:04d}.png" for i in range(2)]  # 249 bytes: the longest a name may be is 255
    for name, path in zip(names, write_clip(tmp_path / "drawn", 2), strict=True):
        os.replace(path, clip / name)
    done = run(tiny_spec(clip, out=str(tmp_path / "out"), control="none"))[-1]
    assert isinstance(done, Done)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == names
