"""One detector for every kind of file: which family a folder, single file or LoRA is, read off the
families' signatures. SD 2.x is recognised only to be refused by name; promoting it to a family is
filling in its module (shown here with a sketch of one)."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.models import families, single_file
from blender_unsample.engine.models.components import load_components
from blender_unsample.engine.models.families import detect
from blender_unsample.engine.protocol import ErrorCode, JobSpec

# The real UNets' configs, as far as the detector reads them (diffusers' config.json keys).
REAL_UNETS = {
    "sd15": {"cross_attention_dim": 768, "addition_embed_type": None, "block_out_channels": [320, 640, 1280, 1280]},
    "sd2": {"cross_attention_dim": 1024, "addition_embed_type": None, "block_out_channels": [320, 640, 1280, 1280]},
    "sdxl": {"cross_attention_dim": 2048, "addition_embed_type": "text_time", "block_out_channels": [320, 640, 1280]},
}


@pytest.mark.parametrize("family", REAL_UNETS)
def test_a_folder_is_told_by_its_unet_config(family):
    assert detect.unet_family(REAL_UNETS[family]) == family
    if family in families.FAMILIES:  # AnimateDiff's adapters follow the UNet's levels
        assert detect.adapter_family({"block_out_channels": REAL_UNETS[family]["block_out_channels"]}) == family


def test_test_sized_models_are_told_by_how_they_condition(tiny_models, tiny_sdxl):
    for tiny, family in ((tiny_models, "sd15"), (tiny_sdxl, "sdxl")):
        config = json.loads((tiny.checkpoint / "unet" / "config.json").read_text())
        assert detect.unet_family(config) == family


def test_an_sd2_folder_is_refused_by_name_before_anything_loads(tiny_models, tmp_path):
    # An SD 2.x folder used to pass as SD 1.5 (same conditioning) and fail later, on shapes.
    folder = tmp_path / "sd21"
    shutil.copytree(tiny_models.checkpoint, folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = 1024
    config_path.write_text(json.dumps(config))
    spec = JobSpec(frames="in", out="out", prompt="ink", model=str(folder), motion_adapter="none", device="cpu")

    with pytest.raises(UnsampleError) as caught:
        load_components(spec, torch.device("cpu"), torch.float32)

    assert caught.value.code == ErrorCode.MODEL_INVALID
    assert "SD 2.x, which Unsample does not support" in caught.value.message
    assert "SD 1.5 or SDXL" in caught.value.message


def test_an_sd2_controlnet_file_is_refused_by_name(tmp_path):
    path = tmp_path / "control_sd21_canny.safetensors"
    save_file(
        {
            "controlnet_cond_embedding.conv_in.weight": torch.zeros(16, 3, 3, 3),
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 1024),
        },
        path,
    )
    with pytest.raises(UnsampleError) as caught:
        single_file.load_controlnet(path)
    assert caught.value.code == ErrorCode.MODEL_INVALID
    assert "control_sd21_canny.safetensors is a ControlNet for SD 2.x" in caught.value.message


@pytest.mark.parametrize(
    ("module", "component", "width", "expected"),
    [
        ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder", 768, {"sdxl"}),
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder", 768, {"sd15"}),
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder", 1024, {"sd2"}),
        ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", "unet", 2048, {"sdxl"}),
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "unet", 320, {"sd15", "sd2"}),
        ("lora_unet_mid_block_attentions_0_transformer_blocks_3_ff_net_2", "unet", 5120, {"sdxl"}),
        ("lora_unet_mid_block_attentions_0_proj_in", "unet", 32, {"sd15", "sd2", "sdxl"}),  # tells nothing
    ],
)
def test_a_lora_update_is_told_by_its_name_and_width(module, component, width, expected):
    assert detect.lora_families(module, component, width) == expected


def test_a_new_family_is_detected_from_its_module_alone(monkeypatch):
    # A sketch of SD 2.1 as a family: its module's facts, registered. The detector, unchanged, now
    # tells its checkpoints, folders and LoRAs instead of refusing them.
    sd21 = dataclasses.replace(
        families.family("sd15"),
        name="sd21",
        label="SD 2.1",
        cross_attention_dim=1024,
        text_width=1024,
        checkpoint_marker="cond_stage_model.model.",
    )
    monkeypatch.setitem(families.FAMILIES, "sd21", sd21)
    monkeypatch.delitem(detect.SIGNATURES, "sd2")
    monkeypatch.setitem(detect.SIGNATURES, "sd21", sd21)
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "cond_stage_model.model.positional_embedding": (77, 1024),
    }

    assert detect.checkpoint_family(shapes) == "sd21"
    assert detect.unet_family({"cross_attention_dim": 1024}) == "sd21"
    assert detect.lora_families("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "text_encoder", 1024) == {
        "sd21"
    }


def test_every_family_has_the_signature_and_facts_the_code_reads():
    for name, family in families.FAMILIES.items():
        assert isinstance(family, families.Family) and family.name == name
        assert len(family.text_encoders) == len(family.text_encoder_classes) == family.text_encoder_count
        assert family.checkpoint_marker in family.text_encoders.values()
        assert list(family.ays_sigmas) == sorted(family.ays_sigmas, reverse=True) and len(family.ays_sigmas) == 11
        assert family.motion_releases, f"{name} names no motion module release"
    markers = [s.checkpoint_marker for s in detect.SIGNATURES.values()]
    assert len(set(markers)) == len(markers), "two families' checkpoints would be told apart by nothing"
