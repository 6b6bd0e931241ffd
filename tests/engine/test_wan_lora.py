"""Wan LoRAs merged into the transformer by diffusers and peft, each file checked first."""

import pytest
import torch
from safetensors.torch import save_file

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.models.wan_lora import apply_wan_loras
from blender_unsample.engine.protocol import ErrorCode
from blender_unsample.engine.tiny_models import build_tiny_wan

pytest.importorskip("peft")

MODULES = ("blocks.0.attn1.to_q", "blocks.1.attn2.to_v", "blocks.1.ffn.net.2")
ORIGINAL = {"attn1.to_q": "self_attn.q", "attn2.to_v": "cross_attn.v", "ffn.net.2": "ffn.2"}  # Wan's own names


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    return build_tiny_wan(tmp_path_factory.mktemp("tiny_wan"))


@pytest.fixture
def transformer(tiny_wan):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(tiny_wan, subfolder="transformer").eval()


def updates(transformer, rank=2, seed=0):
    """A random low-rank update for a few of the transformer's modules: {module: (A, B)}."""
    generator = torch.Generator().manual_seed(seed)
    made = {}
    for name in MODULES:
        out, inp = transformer.get_submodule(name).weight.shape
        made[name] = (torch.randn(rank, inp, generator=generator), torch.randn(out, rank, generator=generator) / 10)
    return made


def diffusers_file(path, made):
    tensors = {}
    for name, (down, up) in made.items():
        tensors[f"transformer.{name}.lora_A.weight"] = down
        tensors[f"transformer.{name}.lora_B.weight"] = up
    save_file(tensors, path)
    return path


def original_file(path, made):
    """The layout of Wan's own trainers and of ComfyUI's Wan LoRAs: diffusion_model.blocks.N.self_attn.q..."""
    tensors = {}
    for name, (down, up) in made.items():
        block, rest = name.split(".", 2)[1:]
        key = f"diffusion_model.blocks.{block}.{ORIGINAL[rest]}"
        tensors[f"{key}.lora_A.weight"] = down
        tensors[f"{key}.lora_B.weight"] = up
    save_file(tensors, path)
    return path


@pytest.mark.parametrize("layout", [diffusers_file, original_file])
def test_a_wan_lora_is_merged_as_weight_times_up_down(layout, transformer, tmp_path):
    made = updates(transformer)
    before = {name: transformer.get_submodule(name).weight.detach().clone() for name in MODULES}
    path = layout(tmp_path / "стиль — акварель.safetensors", made)  # a user's name, not ASCII

    assert apply_wan_loras([(path, 0.7)], transformer) == 1

    for name, (down, up) in made.items():
        merged = transformer.get_submodule(name).weight.detach()
        torch.testing.assert_close(merged, before[name] + 0.7 * up @ down, rtol=1e-5, atol=1e-6)
    assert not any("lora" in key for key in transformer.state_dict()), "the adapter layers stay behind"


def test_an_sd_lora_is_refused_before_any_weight_changes(transformer, tmp_path):
    path = tmp_path / "sd_style.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(320, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        path,
    )
    good = diffusers_file(tmp_path / "good.safetensors", updates(transformer))
    before = {key: value.clone() for key, value in transformer.state_dict().items()}

    with pytest.raises(UnsampleError) as caught:
        apply_wan_loras([(good, 1.0), (path, 1.0)], transformer)

    assert caught.value.code in (ErrorCode.MODEL_MISMATCH, ErrorCode.MODEL_INVALID)
    assert "sd_style.safetensors" in caught.value.message
    after = transformer.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before), "the good file was merged anyway"


def test_a_lora_for_another_wan_size_is_refused(transformer, tmp_path):
    made = {name: (torch.ones(2, 7), up) for name, (_, up) in updates(transformer).items()}  # 7 inputs: wrong
    with pytest.raises(UnsampleError) as caught:
        apply_wan_loras([(diffusers_file(tmp_path / "big.safetensors", made), 1.0)], transformer)
    assert caught.value.code == ErrorCode.MODEL_MISMATCH and "another Wan size" in caught.value.message


def test_weight_zero_skips_the_file_and_a_missing_one_is_named(transformer, tmp_path):
    assert apply_wan_loras([(tmp_path / "not-read.safetensors", 0.0)], transformer) == 0
    with pytest.raises(UnsampleError) as caught:
        apply_wan_loras([(tmp_path / "gone.safetensors", 1.0)], transformer)
    assert caught.value.code == ErrorCode.MODEL_NOT_FOUND and "gone.safetensors" in caught.value.message
