"""Bad input and faults: each gets its own code and message, and nothing half-made is left."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_clip
from PIL import Image

from blender_unsample.engine.errors import Cancelled, UnsampleError
from blender_unsample.engine.job.output import MANIFEST_NAME
from blender_unsample.engine.job.pipeline import restyle
from blender_unsample.engine.models import components as models_module
from blender_unsample.engine.protocol import ErrorCode

ROOT = Path(__file__).resolve().parents[2]


def fail(spec) -> tuple[UnsampleError, list]:
    events = []
    with pytest.raises(UnsampleError) as error:
        restyle(spec, events.append)
    return error.value, events


def test_a_full_disk_stops_the_job_with_whole_frames_only(tiny_spec, tmp_path, monkeypatch):
    clip = tmp_path / "clip"
    write_clip(clip, 4)
    real_save = Image.Image.save
    saved = []

    def save_until_full(image, target, *args, **kwargs):
        if len(saved) == 2:  # the third frame: half of it lands, then the disk is full
            Path(target).write_bytes(b"\x89PNG half a frame")
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(target)
        return real_save(image, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_full)
    error, _ = fail(tiny_spec(clip, vae_batch=1, control="none"))
    assert error.code is ErrorCode.DISK_FULL and "the disk is full" in error.message
    out = tmp_path / "out"
    written = sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME)  # the record of what it wrote
    assert written == ["frame_0001.png", "frame_0002.png"], "no partial frame"
    monkeypatch.undo()
    for name in written:
        Image.open(out / name).load()


def test_running_out_of_gpu_memory_names_the_options_that_lower_it(tiny_spec, tmp_path, monkeypatch):
    from blender_unsample.engine.method import context_windows

    clip = tmp_path / "clip"
    write_clip(clip, 3)

    def no_memory(self, x, sigma, **extra):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(context_windows.ContextWindowDenoiser, "__call__", no_memory)
    error, _ = fail(tiny_spec(clip))
    assert error.code is ErrorCode.OUT_OF_MEMORY
    for option in ("feed-forward chunking", "frames per VAE call", "CPU offload", "VAE tiling", "context length",
                   "resolution"):  # fmt: skip
        assert option in error.message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


def test_frames_too_small_for_the_model_are_refused(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 2, size=(12, 12))  # processed at 8x8; the tiny UNet needs 16 pixels a side
    error, _ = fail(tiny_spec(clip))
    assert error.code is ErrorCode.BAD_FRAMES and "too small for this model" in error.message


def test_an_output_folder_that_cannot_be_made_is_named(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    error, _ = fail(tiny_spec(clip, out=str(blocker / "out")))
    assert error.code is ErrorCode.OUTPUT_NOT_WRITABLE and str(blocker / "out") in error.message


def test_an_output_folder_that_refuses_writes_is_named(tiny_spec, tmp_path, monkeypatch):
    # The tests run as root, for whom permission bits do not apply: the refusal is what the
    # operating system would say for a read-only folder.
    clip, out = tmp_path / "clip", tmp_path / "out"
    write_clip(clip, 2)
    out.mkdir()
    real_write = Path.write_bytes

    def read_only(path, data):
        if path.parent == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    error, events = fail(tiny_spec(clip, out=str(out)))
    assert error.code is ErrorCode.OUTPUT_NOT_WRITABLE
    assert str(out) in error.message and "Permission denied" in error.message
    assert not [e for e in events if e.type == "progress" and e.stage != "load"], "refused before any work"


def test_an_empty_frames_folder_is_named(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "notes.txt").write_text("not a frame")
    error, _ = fail(tiny_spec(clip))
    assert error.code is ErrorCode.BAD_FRAMES and f"no frames in {clip}" in error.message


def test_a_frame_that_is_not_an_image_is_named(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 3)
    broken = sorted(clip.iterdir())[1]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    error, _ = fail(tiny_spec(clip))
    assert error.code is ErrorCode.BAD_FRAMES and f"cannot read frame {broken.name}" in error.message


def test_a_prompt_longer_than_the_text_encoder_takes_is_cut_with_a_warning(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    events = []
    restyle(tiny_spec(clip, prompt="a very long description " * 20, control="none"), events.append)
    warnings = [e.message for e in events if e.type == "warning"]
    assert any("the text encoder takes 77" in w and "only" in w for w in warnings), warnings


def test_nothing_is_written_outside_the_chosen_folders(tiny_models, tmp_path):
    clip, out, home, temp, cwd = (tmp_path / name for name in ("clip", "out", "home", "tmp", "cwd"))
    write_clip(clip, 2)
    for folder in (home, temp, cwd):
        folder.mkdir()
    command = [
        sys.executable, "-m", "blender_unsample.engine", "restyle", "--frames", str(clip), "--out", str(out),
        "--prompt", "ink", "--model", str(tiny_models.checkpoint), "--motion-adapter", str(tiny_models.motion_adapter),
        "--control", "none", "--steps", "2", "--device", "cpu", "--progress", "none",
    ]  # fmt: skip
    env = dict(os.environ, HOME=str(home), TMPDIR=str(temp), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    subprocess.run(command, cwd=cwd, env=env, check=True, timeout=300)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in clip.iterdir())
    for folder in (home, temp, cwd):
        assert not list(folder.rglob("*")), f"{folder.name} was written to"


def test_downloads_report_each_file_and_fetch_one_copy_of_the_weights(monkeypatch):
    from huggingface_hub import HfApi

    listing = [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors", "vae/config.json", "unet/flax_model.msgpack",
    ]  # fmt: skip
    fetched = {}

    def fake_snapshot(repo, allow_patterns, tqdm_class):
        fetched["files"] = allow_patterns
        bar = tqdm_class(total=len(allow_patterns), disable=True)  # progress bars are off in the worker
        for _ in allow_patterns:
            bar.update(1)

    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo: listing)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    reports = []
    models_module.download("someone/model", "unet", lambda repo, done, total: reports.append((done, total)))
    assert fetched["files"] == ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    assert reports == [(0, 3), (1, 3), (2, 3), (3, 3)]

    def cancel_after_one(repo, done, total):
        if done == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        models_module.download("someone/model", "unet", cancel_after_one)
