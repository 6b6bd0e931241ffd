"""Single-file models through the whole job: the same weights give the same frames as folders."""

import errno
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_clip
from formats import animatediff, animatediff_release, ldm_controlnet, ldm_vae, original_checkpoint, prefixed
from PIL import Image
from safetensors.torch import load_file, save_file

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.job.pipeline import restyle
from blender_unsample.engine.models.components import load_components
from blender_unsample.engine.protocol import Done, ErrorCode, JobSpec


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    """No test reads the user's Hugging Face cache or reaches the network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def single_files(models, folder):
    """The tiny diffusers set written as a user downloads them: a checkpoint file, an AnimateDiff
    motion module file, and (SD 1.5) a ControlNet 1.x file, each file next to its config.json."""
    from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    source = models.checkpoint
    parts = {
        "unet": UNet2DConditionModel.from_pretrained(source / "unet"),
        "vae": AutoencoderKL.from_pretrained(source / "vae"),
        "text_encoder": CLIPTextModel.from_pretrained(source / "text_encoder"),
    }
    if models.family == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(source / "text_encoder_2")
    folder.mkdir()
    (folder / "motion").mkdir()
    files = {"model": folder / "checkpoint.safetensors", "motion_adapter": folder / "motion" / "mm.safetensors"}
    # Real AnimateDiff files carry no config: their heads and norm groups are AnimateDiff's fixed
    # ones. The tiny module's differ, so its config.json goes beside it, as a diffusers folder has it.
    shutil.copy(models.motion_adapter / "config.json", folder / "motion" / "config.json")
    save_file(original_checkpoint(parts, models.family), files["model"])
    adapter = MotionAdapter.from_pretrained(models.motion_adapter).state_dict()
    save_file({k: v.clone().contiguous() for k, v in animatediff(adapter).items()}, files["motion_adapter"])
    if models.family == "sd15":
        controlnet = ControlNetModel.from_pretrained(models.controlnet)
        (folder / "controlnet").mkdir()
        shutil.copy(models.controlnet / "config.json", folder / "controlnet" / "config.json")
        files["controlnet"] = folder / "controlnet" / "control_canny.safetensors"
        state = prefixed("control_model.", ldm_controlnet(controlnet.state_dict(), controlnet.config))
        save_file({k: v.contiguous() for k, v in state.items()}, files["controlnet"])
    return files


def frames_of(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_single_files_restyle_exactly_like_the_folders_they_were_written_from(family, tiny_models, tiny_sdxl, tmp_path):
    models = tiny_models if family == "sd15" else tiny_sdxl
    clip = tmp_path / "clip"
    write_clip(clip, 4)
    common = dict(frames=str(clip), prompt="ink", family=family, steps=2, context=4, overlap=1, device="cpu")
    control = {"control": "canny"} if family == "sd15" else {"control": "none"}
    folders = JobSpec(
        out=str(tmp_path / "folders"), model=str(models.checkpoint), motion_adapter=str(models.motion_adapter),
        controlnet=str(models.controlnet), **common, **control,
    )  # fmt: skip
    files = single_files(models, tmp_path / "files")
    singles = JobSpec(
        out=str(tmp_path / "singles"), model=str(files["model"]), motion_adapter=str(files["motion_adapter"]),
        controlnet=str(files.get("controlnet", "")), config=str(models.checkpoint), **common, **control,
    )  # fmt: skip
    with torch.inference_mode():
        restyle(folders, lambda event: None)
        restyle(singles, lambda event: None)
    np.testing.assert_array_equal(frames_of(tmp_path / "folders"), frames_of(tmp_path / "singles"))


def test_a_single_file_checkpoint_without_configs_says_which_and_how(tiny_models, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    files = single_files(tiny_models, tmp_path / "files")
    spec = JobSpec(frames=str(clip), out=str(tmp_path / "o"), prompt="x", model=str(files["model"]), device="cpu")
    with pytest.raises(UnsampleError) as error:
        restyle(spec, lambda event: None)
    assert error.value.code is ErrorCode.MODEL_NOT_FOUND
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in error.value.message
    assert "--allow-download" in error.value.message


def quick_spec(models, clip, out, **changes) -> JobSpec:
    """A small, fast SD 1.5 job over the tiny folders; ``changes`` swap in the files under test."""
    settings = dict(
        frames=str(clip), out=str(out), prompt="ink", model=str(models.checkpoint),
        motion_adapter=str(models.motion_adapter), control="none", steps=2, context=4, overlap=1, device="cpu",
    )  # fmt: skip
    return JobSpec(**{**settings, **changes})


def unet_widths(models) -> tuple[int, ...]:
    from diffusers import UNet2DConditionModel

    return tuple(UNet2DConditionModel.load_config(models.checkpoint, subfolder="unet")["block_out_channels"])


# --- AnimateDiff v1 and v3 ------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "frames"), [("v1", 24), ("v3", 32)])
def test_animatediff_v1_and_v3_files_restyle_with_the_config_read_off_them(version, frames, tiny_models, tmp_path):
    path = tmp_path / f"mm_sd_{version}.ckpt"  # as AnimateDiff ships them: no config beside
    torch.save(animatediff(animatediff_release(version, unet_widths(tiny_models)).state_dict()), path)
    clip = tmp_path / "clip"
    write_clip(clip, 3)
    spec = quick_spec(tiny_models, clip, tmp_path / "out", motion_adapter=str(path))

    components = load_components(spec, torch.float32, torch.float32)
    done = restyle(spec, lambda event: None)

    assert components.motion and type(components.unet).__name__ == "UNetMotionModel"
    assert components.unet.config.motion_max_seq_length == frames
    assert not components.unet.config.use_motion_mid_block  # only v2 has one
    assert isinstance(done, Done) and done.frames == 3
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(p.name for p in clip.iterdir())


# --- Hub ids from the Hugging Face cache ----------------------------------------------------------


def cache_repo(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out as huggingface_hub caches ``repo_id``: content-named blobs, a snapshot of
    links to them under a commit hash, and refs/main naming that commit."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    for file in (f for f in folder.rglob("*") if f.is_file()):
        data = file.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)


def test_hub_ids_load_offline_from_the_hugging_face_cache(tiny_models, tmp_path):
    from huggingface_hub import constants

    ids = {"model": "tiny-org/tiny-sd15", "motion_adapter": "tiny-org/tiny-motion", "controlnet": "tiny-org/tiny-canny"}
    folders = {"model": tiny_models.checkpoint, "motion_adapter": tiny_models.motion_adapter}
    folders["controlnet"] = tiny_models.controlnet
    for role, repo in ids.items():
        cache_repo(Path(constants.HF_HUB_CACHE), repo, folders[role])
    clip = tmp_path / "clip"
    write_clip(clip, 2)

    restyle(quick_spec(tiny_models, clip, tmp_path / "by_id", control="canny", **ids), lambda event: None)
    by_folder = {role: str(folder) for role, folder in folders.items()}
    restyle(quick_spec(tiny_models, clip, tmp_path / "by_folder", control="canny", **by_folder), lambda event: None)

    assert constants.HF_HUB_OFFLINE
    np.testing.assert_array_equal(frames_of(tmp_path / "by_id"), frames_of(tmp_path / "by_folder"))


def test_a_damaged_file_in_the_hugging_face_cache_is_named_not_called_missing(tiny_models, tmp_path):
    from huggingface_hub import constants

    cache_repo(Path(constants.HF_HUB_CACHE), "tiny-org/tiny-sd15", tiny_models.checkpoint)
    snapshot = next((Path(constants.HF_HUB_CACHE) / "models--tiny-org--tiny-sd15" / "snapshots").iterdir())
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    cut_short(weights.resolve())  # the blob the snapshot links to, as an interrupted download leaves it

    with pytest.raises(UnsampleError) as error:
        load_components(quick_spec(tiny_models, "in", "out", model="tiny-org/tiny-sd15"), torch.float32, torch.float32)

    assert error.value.code is ErrorCode.MODEL_INVALID, error.value.message
    assert str(weights) in error.value.message and "cut short" in error.value.message


# --- a separate VAE -------------------------------------------------------------------------------


def another_vae(models, folder: Path):
    """A VAE of the checkpoint's shape but other (random) weights, saved as a diffusers folder."""
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(models.checkpoint, subfolder="vae")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        vae = AutoencoderKL.from_config(config)
    vae.save_pretrained(folder)
    return vae


def test_a_separate_vae_folder_or_file_is_the_one_that_makes_the_frames(tiny_models, tmp_path):
    vae = another_vae(tiny_models, tmp_path / "vae_folder")
    (tmp_path / "vae_file").mkdir()
    shutil.copy(tmp_path / "vae_folder" / "config.json", tmp_path / "vae_file" / "config.json")
    vae_file = tmp_path / "vae_file" / "vae-ft-mse.safetensors"
    save_file({k: v.contiguous() for k, v in ldm_vae(vae.state_dict(), vae.config).items()}, vae_file)
    clip = tmp_path / "clip"
    write_clip(clip, 2)

    vaes = {"own": "", "folder": str(tmp_path / "vae_folder"), "file": str(vae_file)}
    for out, vae_path in vaes.items():
        restyle(quick_spec(tiny_models, clip, tmp_path / out, vae=vae_path), lambda event: None)

    own, folder, single = (frames_of(tmp_path / out).astype(np.int16) for out in ("own", "folder", "file"))
    assert np.abs(folder - own).mean() > 5, "the separate VAE was not used"
    np.testing.assert_array_equal(single, folder)  # the same VAE, as a folder or as one file


# --- damaged and unreadable files -----------------------------------------------------------------


def cut_short(file: Path) -> Path:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    return file


def damaged(role: str, models, tmp_path) -> tuple[dict[str, str], Path]:
    """Job changes that bring in one cut-short file of ``role``, and that file."""
    if role in ("checkpoint UNet", "checkpoint text encoder"):
        folder = shutil.copytree(models.checkpoint, tmp_path / "checkpoint")
        part = "unet/diffusion_pytorch_model" if role == "checkpoint UNet" else "text_encoder/model"
        return {"model": str(folder)}, cut_short(folder / f"{part}.safetensors")
    if role == "checkpoint UNet in PyTorch's .bin format":  # as older diffusers folders hold it
        folder = shutil.copytree(models.checkpoint, tmp_path / "checkpoint")
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        torch.save(load_file(weights), weights.with_suffix(".bin"))
        weights.unlink()
        return {"model": str(folder)}, cut_short(weights.with_suffix(".bin"))
    folder = tmp_path / role.replace(" ", "_")
    source = {"motion module": models.motion_adapter, "ControlNet": models.controlnet}.get(role)
    folder = shutil.copytree(source or models.checkpoint / "vae", folder)
    # A single file beside its config.json, as diffusers' one-file downloads sit.
    file = (folder / "diffusion_pytorch_model.safetensors").rename(folder / "model.safetensors")
    field = {"motion module": "motion_adapter", "ControlNet": "controlnet", "VAE": "vae"}[role]
    return {field: str(file), "control": "canny" if role == "ControlNet" else "none"}, cut_short(file)


@pytest.mark.parametrize(
    "role",
    [
        "motion module",
        "ControlNet",
        "VAE",
        "checkpoint UNet",
        "checkpoint text encoder",
        "checkpoint UNet in PyTorch's .bin format",
    ],
)
def test_a_cut_short_file_is_refused_naming_it_and_its_role(role, tiny_models, tmp_path):
    changes, file = damaged(role, tiny_models, tmp_path)

    with pytest.raises(UnsampleError) as error:
        load_components(quick_spec(tiny_models, "in", "out", **changes), torch.float32, torch.float32)

    assert error.value.code is ErrorCode.MODEL_INVALID, error.value.message
    message = error.value.message
    assert str(file) in message and role.split()[0] in message and "cut short" in message, message


def deny_reading(monkeypatch, denied: Path) -> None:
    """As if ``denied``'s permissions kept this user out: tests run as root, where chmod does not, so
    the safetensors readers the loaders use refuse that one file."""
    import safetensors
    import safetensors.torch

    def guarded(read):
        def refusing(filename, *args, **kwargs):
            if Path(filename).resolve() == denied.resolve():
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(filename))
            return read(filename, *args, **kwargs)

        return refusing

    readers = ((safetensors, "safe_open"), (safetensors.torch, "safe_open"), (safetensors.torch, "load_file"))
    for module, name in readers:
        monkeypatch.setattr(module, name, guarded(getattr(module, name)))


@pytest.mark.parametrize("role", ["motion module", "checkpoint weights", "LoRA"])
def test_a_file_that_cannot_be_read_is_named_and_not_called_damaged(role, tiny_models, tmp_path, monkeypatch):
    changes: dict = {}
    if role == "motion module":
        file = tmp_path / "mm.safetensors"
        state = animatediff(animatediff_release("v3", unet_widths(tiny_models)).state_dict())
        save_file({key: value.clone().contiguous() for key, value in state.items()}, file)
        changes["motion_adapter"] = str(file)
    elif role == "LoRA":
        file = tmp_path / "style.safetensors"
        file.write_bytes(b"unread")
        changes["loras"] = [str(file)]
    else:
        file = tiny_models.checkpoint / "unet" / "diffusion_pytorch_model.safetensors"
    deny_reading(monkeypatch, file)

    with pytest.raises(UnsampleError) as error:
        load_components(quick_spec(tiny_models, "in", "out", **changes), torch.float32, torch.float32)

    assert error.value.code is ErrorCode.MODEL_NOT_FOUND, error.value.message
    message = error.value.message
    assert str(file) in message and role in message and "cannot be read" in message, message
    assert "damaged" not in message and "cut short" not in message
