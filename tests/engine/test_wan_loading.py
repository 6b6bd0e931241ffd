"""Wan's models load from a diffusers folder, and parts that do not fit are named before any weights move."""

import json
import shutil

import pytest
import torch

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.models.wan import load_wan
from blender_unsample.engine.protocol import ErrorCode
from blender_unsample.engine.tiny_models import build_tiny_models, build_tiny_wan


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    return build_tiny_wan(tmp_path_factory.mktemp("tiny_wan"))


def load(folder, **options):
    return load_wan(str(folder), torch.float32, torch.float32, **options)


def test_a_wan_folder_loads_with_diffusers_own_classes(tiny_wan):
    wan = load(tiny_wan)
    assert type(wan.transformer).__name__ == "WanTransformer3DModel"
    assert type(wan.vae).__name__ == "AutoencoderKLWan"
    assert type(wan.text_encoder).__name__ == "UMT5EncoderModel"
    assert wan.transformer_2 is None and wan.boundary_ratio is None
    assert not wan.transformer.training


def test_wan_2_2_s_second_expert_and_its_boundary_are_loaded(tiny_wan, tmp_path):
    folder = tmp_path / "a14b"
    shutil.copytree(tiny_wan, folder)
    shutil.copytree(folder / "transformer", folder / "transformer_2")
    index = json.loads((folder / "model_index.json").read_text())
    index |= {"transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.875}
    (folder / "model_index.json").write_text(json.dumps(index))

    wan = load(folder)

    assert wan.transformer_2 is not None and wan.boundary_ratio == 0.875


def wan_with(tiny_wan, tmp_path, part, replacement):
    folder = tmp_path / f"wan-with-other-{part}"
    shutil.copytree(tiny_wan, folder)
    shutil.rmtree(folder / part)
    replacement(folder / part)
    return folder


def test_a_wan_2_2_vae_with_a_wan_2_1_transformer_is_named(tiny_wan, tmp_path):
    from diffusers import AutoencoderKLWan

    def wan_2_2_vae(where):
        AutoencoderKLWan(base_dim=3, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1).save_pretrained(where)

    with pytest.raises(UnsampleError) as caught:
        load(wan_with(tiny_wan, tmp_path, "vae", wan_2_2_vae))
    assert caught.value.code == ErrorCode.MODEL_MISMATCH
    assert "Wan 2.2 TI2V's VAE (48-channel latents)" in caught.value.message
    assert "use Wan 2.1's VAE (16-channel latents)" in caught.value.message


def test_a_stable_diffusion_vae_given_for_wan_is_named(tiny_wan, tmp_path):
    sd = build_tiny_models(tmp_path / "sd")
    with pytest.raises(UnsampleError) as caught:
        load(tiny_wan, vae=str(sd.checkpoint / "vae"))
    assert caught.value.code == ErrorCode.MODEL_MISMATCH and str(sd.checkpoint / "vae") in caught.value.message
    assert "is an AutoencoderKL, not a Wan video VAE" in caught.value.message


def test_a_text_encoder_that_is_not_umt5_is_named(tiny_wan, tmp_path):
    sd = build_tiny_models(tmp_path / "sd")
    folder = wan_with(
        tiny_wan, tmp_path, "text_encoder", lambda where: shutil.copytree(sd.checkpoint / "text_encoder", where)
    )
    with pytest.raises(UnsampleError) as caught:
        load(folder)
    assert caught.value.code == ErrorCode.MODEL_MISMATCH
    assert "is a clip_text_model model" in caught.value.message and "UMT5" in caught.value.message


def test_umt5_is_never_loaded_in_float16(tiny_wan):
    wan = load_wan(str(tiny_wan), torch.float16, torch.float32)
    assert wan.text_encoder.dtype == torch.bfloat16 and wan.transformer.dtype == torch.float16
