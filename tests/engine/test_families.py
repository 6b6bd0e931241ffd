"""SDXL end to end on tiny models, and every family mismatch caught before sampling."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import write_clip
from formats import ldm_vae
from PIL import Image
from safetensors.torch import save_file

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.job.devices import placement_for
from blender_unsample.engine.job.pipeline import restyle
from blender_unsample.engine.models.components import load_components, vae_dtype
from blender_unsample.engine.protocol import DEFAULT_MODELS, Done, ErrorCode, JobSpec


def sdxl_spec(tiny_sdxl, clip, out, **changes) -> JobSpec:
    settings = dict(
        frames=str(clip),
        out=str(out),
        prompt="a watercolor of a harbour",
        family="sdxl",
        model=str(tiny_sdxl.checkpoint),
        motion_adapter=str(tiny_sdxl.motion_adapter),
        controlnet=str(tiny_sdxl.controlnet),
        steps=2,
        context=4,
        overlap=1,
        device="cpu",
    )
    return JobSpec(**{**settings, **changes})


def test_sdxl_defaults_are_its_own_models_and_size():
    spec = JobSpec(frames="in", out="out", prompt="ink", family="sdxl")
    assert spec.model == DEFAULT_MODELS["sdxl"].checkpoint == "stabilityai/stable-diffusion-xl-base-1.0"
    assert "sdxl" in spec.motion_adapter and "sdxl" in spec.controlnet


def test_sdxl_restyles_with_both_text_encoders_motion_and_controlnet(tiny_sdxl, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 6)
    events = []
    restyle(sdxl_spec(tiny_sdxl, clip, tmp_path / "out", control="canny", controlnet_strength=1.0), events.append)
    assert isinstance(events[-1], Done) and events[-1].frames == 6
    for path in sorted(clip.iterdir()):
        styled = np.asarray(Image.open(tmp_path / "out" / path.name), dtype=np.int16)
        assert styled.shape == np.asarray(Image.open(path)).shape
        assert np.abs(styled - np.asarray(Image.open(path), dtype=np.int16)).mean() > 5


def test_the_sdxl_prompt_uses_both_encoders_pooled_text_and_the_frame_size(tiny_sdxl):
    spec = sdxl_spec(tiny_sdxl, "in", "out", control="none")
    components = load_components(spec, torch.float32, torch.float32)
    from blender_unsample.engine.job.prompts import encode_prompt

    with torch.inference_mode():
        cond = encode_prompt(
            components.tokenizers, components.text_encoders, "a harbour", torch.device("cpu"), (96, 64)
        )
    assert cond.embeds.shape == (1, 77, 64)  # 32 + 32 features from the two encoders
    assert cond.added["text_embeds"].shape == (1, 32)
    assert cond.added["time_ids"].tolist() == [[64, 96, 0, 0, 64, 96]]


@pytest.mark.parametrize(
    ("device", "family", "vae_config", "expected"),
    [
        ("cuda", "sdxl", {"force_upcast": True}, torch.float32),  # SDXL's own VAE overflows in fp16
        ("cuda", "sdxl", {}, torch.float32),  # diffusers' default is to upcast
        ("cuda", "sdxl", {"force_upcast": False}, torch.float16),  # a fixed one, e.g. sdxl-vae-fp16-fix
        ("cuda", "sd15", {"force_upcast": True}, torch.float16),
        ("mps", "sdxl", {"force_upcast": False}, torch.float32),  # MPS runs every VAE in fp32
        ("cpu", "sdxl", {"force_upcast": False}, torch.float32),
    ],
)
def test_the_vae_precision_follows_the_device_family_and_config(device, family, vae_config, expected):
    assert vae_dtype(placement_for(device).vae_dtype, family, vae_config) == expected


def fixed_sdxl_vae(tiny_sdxl, folder, upcast: bool):
    """The tiny SDXL VAE as a folder whose config turns force_upcast off (or on), as
    madebyollin/sdxl-vae-fp16-fix's does, and the same weights as one file beside that config.json."""
    from diffusers import AutoencoderKL

    shutil.copytree(tiny_sdxl.checkpoint / "vae", folder)
    config = json.loads((folder / "config.json").read_text()) | {"force_upcast": upcast}
    (folder / "config.json").write_text(json.dumps(config))
    vae = AutoencoderKL.from_pretrained(folder)
    file = folder / "sdxl_vae.safetensors"
    save_file({k: v.contiguous() for k, v in ldm_vae(vae.state_dict(), vae.config).items()}, file)
    return folder, file


@pytest.mark.parametrize(
    ("vae", "expected"),
    [
        ("own", torch.float32),
        ("fixed folder", torch.float16),
        ("fixed file", torch.float16),  # its config.json beside it says force_upcast false
        ("original file", torch.float32),
        ("original folder", torch.float32),
    ],
)
def test_sdxl_vae_stays_in_full_precision_unless_it_is_a_fixed_one(vae, expected, tiny_sdxl, tmp_path):
    changes = {}
    if vae != "own":
        folder, file = fixed_sdxl_vae(tiny_sdxl, tmp_path / "vae", upcast=vae.startswith("original"))
        changes["vae"] = str(file if vae.endswith("file") else folder)
    spec = sdxl_spec(tiny_sdxl, "in", "out", control="none", motion_adapter="none", **changes)
    components = load_components(spec, torch.float16, torch.float16)  # what a CUDA GPU asks for
    assert components.unet.dtype == torch.float16
    assert components.vae.dtype == expected


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"family": "sd15"}, ["is SDXL but the model family is set to SD 1.5", "--family sdxl"]),
        ({"motion_adapter": "SD15_ADAPTER"}, ["motion module", "made for SD 1.5", "checkpoint", "is SDXL"]),
        ({"controlnet": "SD15_CONTROLNET"}, ["ControlNet", "made for SD 1.5", "is SDXL"]),
    ],
)
def test_files_of_the_other_family_are_named_before_any_sampling(tiny_sdxl, tiny_models, tmp_path, changes, fragments):
    swap = {"SD15_ADAPTER": str(tiny_models.motion_adapter), "SD15_CONTROLNET": str(tiny_models.controlnet)}
    changes = {k: swap.get(v, v) for k, v in changes.items()}
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    events = []
    with pytest.raises(UnsampleError) as error:
        restyle(sdxl_spec(tiny_sdxl, clip, tmp_path / "out", **changes), events.append)
    assert error.value.code is ErrorCode.MODEL_MISMATCH
    for fragment in fragments:
        assert fragment in error.value.message
    for path in changes.values():
        if path not in ("sd15",):
            assert path in error.value.message, "the message names the file"
    assert str(tiny_sdxl.checkpoint) in error.value.message, "and the checkpoint"
    assert not any(e.type == "progress" and e.stage != "load" for e in events), "nothing was sampled"


def test_an_sdxl_motion_module_with_an_sd15_checkpoint_is_refused(tiny_models, tiny_sdxl, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    spec = JobSpec(
        frames=str(clip), out=str(tmp_path / "out"), prompt="x", model=str(tiny_models.checkpoint),
        motion_adapter=str(tiny_sdxl.motion_adapter), control="none", device="cpu",
    )  # fmt: skip
    with pytest.raises(UnsampleError, match=r"made for SDXL, but the checkpoint .* is SD 1\.5") as error:
        restyle(spec, lambda event: None)
    assert str(tiny_sdxl.motion_adapter) in error.value.message


def test_a_vae_of_the_wrong_size_is_refused(tiny_models, tmp_path):
    from diffusers import AutoencoderKL

    wide = tmp_path / "wide_vae"
    AutoencoderKL(latent_channels=16, block_out_channels=(8,), norm_num_groups=8).save_pretrained(wide)
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    spec = JobSpec(
        frames=str(clip), out=str(tmp_path / "out"), prompt="x", model=str(tiny_models.checkpoint),
        motion_adapter=str(tiny_models.motion_adapter), vae=str(wide), control="none", device="cpu",
    )  # fmt: skip
    with pytest.raises(UnsampleError, match="16-channel latents") as error:
        restyle(spec, lambda event: None)
    assert error.value.code is ErrorCode.MODEL_MISMATCH
    message = error.value.message
    assert str(wide) in message and "made for SD 3 or FLUX" in message
    assert f"the checkpoint {tiny_models.checkpoint} is SD 1.5" in message


def test_the_sdxl_motion_unet_keeps_the_checkpoints_size_conditioning(tiny_sdxl):
    # diffusers' from_unet2d leaves SDXL's add_embedding at random init; ours must carry it over.
    from diffusers import UNet2DConditionModel

    spec = sdxl_spec(tiny_sdxl, "in", "out", control="none")
    motion_unet = load_components(spec, torch.float32, torch.float32).unet
    image_unet = UNet2DConditionModel.from_pretrained(tiny_sdxl.checkpoint, subfolder="unet")
    for name, value in image_unet.add_embedding.state_dict().items():
        torch.testing.assert_close(motion_unet.add_embedding.state_dict()[name], value, rtol=0, atol=0)


def test_sdxl_restyles_repeat_bit_for_bit(tiny_sdxl, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 3)
    for out in ("a", "b"):
        restyle(sdxl_spec(tiny_sdxl, clip, tmp_path / out, control="none"), lambda event: None)
    for path in sorted((tmp_path / "a").glob("*.png")):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


def test_hotshot_xl_layers_restyle_in_windows_of_eight_frames(tiny_sdxl, tmp_path):
    from diffusers import UNet2DConditionModel
    from hotshot_format import write_hotshot_file

    unet_config = UNet2DConditionModel.load_config(tiny_sdxl.checkpoint, subfolder="unet")
    layers = write_hotshot_file(tmp_path / "hsxl_temporal_layers.safetensors", unet_config)
    clip = tmp_path / "clip"
    write_clip(clip, 12)
    events = []
    spec = sdxl_spec(tiny_sdxl, clip, tmp_path / "out", motion_adapter=str(layers), context=16, overlap=4)
    restyle(spec, events.append)
    assert isinstance(events[-1], Done) and events[-1].frames == 12
    assert any("context 16 lowered to 8" in e.message for e in events if e.type == "warning")
    assert {e.windows for e in events if e.type == "progress" and e.stage == "resample"} == {2}


def test_hotshot_xl_layers_with_an_sd15_checkpoint_are_refused(tiny_models, tiny_sdxl, tmp_path):
    from diffusers import UNet2DConditionModel
    from hotshot_format import write_hotshot_file

    unet_config = UNet2DConditionModel.load_config(tiny_sdxl.checkpoint, subfolder="unet")
    layers = write_hotshot_file(tmp_path / "hsxl_temporal_layers.safetensors", unet_config)
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    spec = JobSpec(
        frames=str(clip), out=str(tmp_path / "out"), prompt="x", model=str(tiny_models.checkpoint),
        motion_adapter=str(layers), control="none", device="cpu",
    )  # fmt: skip
    with pytest.raises(UnsampleError) as error:
        restyle(spec, lambda event: None)
    assert error.value.code is ErrorCode.MODEL_MISMATCH and str(layers) in error.value.message
