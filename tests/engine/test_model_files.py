"""Single-file models through the whole job: the same weights give the same frames as folders."""

import shutil

import numpy as np
import pytest
import torch
from conftest import write_clip
from formats import animatediff, ldm_controlnet, original_checkpoint, prefixed
from PIL import Image
from safetensors.torch import save_file

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.pipeline import restyle
from blender_unsample.engine.protocol import ErrorCode, JobSpec


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
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.iterdir())])


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
