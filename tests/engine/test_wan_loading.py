"""Wan's models load from a diffusers folder, and parts that do not fit are named before any weights move."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

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


# --- the transformer as one file in Wan's own layout --------------------------------------------------

# diffusers' names to Wan's (what diffusers' converter undoes); norm2 and norm3 trade places.
TO_WAN = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm3."),
    ("proj_out", "head.head"),
]


def wan_layout(state):
    out = {}
    for key, value in state.items():
        name = key
        for ours, theirs in TO_WAN:
            name = name.replace(ours, theirs)
        if name == "scale_shift_table":
            name = "head.modulation"
        name = name.replace(".scale_shift_table", ".modulation")
        out[f"model.diffusion_model.{name}"] = value.contiguous()
    return out


def test_a_transformer_file_in_wan_s_own_layout_loads_with_the_folder_s_configs(tiny_wan, tmp_path):
    from diffusers import WanTransformer3DModel

    original = WanTransformer3DModel.from_pretrained(tiny_wan, subfolder="transformer")
    path = tmp_path / "wan2.1_t2v_tiny.safetensors"
    save_file(wan_layout(original.state_dict()), path)

    wan = load_wan(str(path), torch.float32, torch.float32, config=str(tiny_wan))

    loaded = wan.transformer.state_dict()
    assert set(loaded) == set(original.state_dict())
    assert all(torch.equal(loaded[key], value) for key, value in original.state_dict().items())
    assert type(wan.vae).__name__ == "AutoencoderKLWan"  # the other parts from the config folder


def test_a_transformer_file_of_another_size_names_the_configs_it_needs(tiny_wan, tmp_path):
    path = tmp_path / "wan2.1_t2v_14B.safetensors"
    save_file(
        {"model.diffusion_model.patch_embedding.weight": torch.zeros(5120, 16, 1, 2, 2),
         "model.diffusion_model.head.modulation": torch.zeros(1, 2, 5120)},
        path,
    )  # fmt: skip
    # A config folder whose text encoder has no weights: the mismatch must be named before any loads.
    configs = tmp_path / "configs-only"
    shutil.copytree(tiny_wan, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(UnsampleError) as caught:
        load_wan(str(path), torch.float32, torch.float32, config=str(configs))
    assert caught.value.code == ErrorCode.MODEL_MISMATCH
    assert (
        "is Wan 2.1 14B" in caught.value.message and "--config Wan-AI/Wan2.1-T2V-14B-Diffusers" in caught.value.message
    )


def test_a_file_that_is_not_a_wan_transformer_says_what_it_seems_to_be(tiny_wan, tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320)}, path)
    with pytest.raises(UnsampleError) as caught:
        load_wan(str(path), torch.float32, torch.float32, config=str(tiny_wan))
    assert (
        caught.value.code == ErrorCode.MODEL_INVALID
        and "is not a Wan transformer: it looks like a LoRA" in caught.value.message
    )
