import re

import pytest
import torch
import torch.nn.functional as F
from hotshot_format import reference_temporal_layer, write_hotshot_file

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.models.hotshot import (
    HOTSHOT_CONTEXT,
    hotshot_motion_adapter,
    hotshot_motion_unet,
    is_hotshot_state_dict,
)
from blender_unsample.engine.protocol import ErrorCode
from blender_unsample.engine.tiny_models import build_tiny_models


@pytest.fixture(scope="module")
def sdxl_unet(tmp_path_factory):
    from diffusers import UNet2DConditionModel

    models = build_tiny_models(tmp_path_factory.mktemp("hotshot_models"), "sdxl")
    return UNet2DConditionModel.from_pretrained(models.checkpoint / "unet").eval()


@pytest.fixture(scope="module")
def hotshot(sdxl_unet, tmp_path_factory):
    """Hotshot-XL temporal layers for the tiny SDXL UNet, read back from a safetensors file."""
    from safetensors.torch import load_file

    path = write_hotshot_file(tmp_path_factory.mktemp("hotshot") / "hsxl_temporal_layers.safetensors", sdxl_unet.config)
    return load_file(str(path))


@pytest.fixture(scope="module")
def motion_unet(sdxl_unet, hotshot):
    return hotshot_motion_unet(sdxl_unet, hotshot).eval()


def clip_with_frames_apart(b: int, c: int, h: int = 4, w: int = 4, seed: int = 1) -> torch.Tensor:
    """(b, c, frames, h, w) whose frames differ in brightness and contrast, so per-frame and
    per-clip statistics differ."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, HOTSHOT_CONTEXT, h, w, generator=generator)
    frames = torch.arange(HOTSHOT_CONTEXT).view(1, 1, -1, 1, 1)
    return x * (0.5 + 0.25 * frames) + 0.3 * frames


def test_detects_hotshot_layout_only(hotshot, sdxl_unet):
    from diffusers import MotionAdapter

    assert is_hotshot_state_dict(hotshot)
    assert is_hotshot_state_dict({f"unet.{key}": value for key, value in hotshot.items()})
    diffusers_layout = MotionAdapter(block_out_channels=(32, 64, 64), motion_layers_per_block=1).state_dict()
    assert not is_hotshot_state_dict(diffusers_layout)
    # AnimateDiff's own files: the same layers as motion_modules.N.temporal_transformer.
    animatediff_layout = {
        re.sub(r"temporal_attentions\.(\d+)", r"motion_modules.\1.temporal_transformer", key): v
        for key, v in hotshot.items()
    }
    assert not is_hotshot_state_dict(animatediff_layout)
    assert not is_hotshot_state_dict(sdxl_unet.state_dict())


def test_weights_land_in_the_adapter_slots(hotshot, sdxl_unet):
    adapter = hotshot_motion_adapter(hotshot, sdxl_unet.config)
    converted = adapter.state_dict()
    source, target = "up_blocks.1.temporal_attentions.1", "up_blocks.1.motion_modules.1"
    # Written out by hand from both codebases, independently of the converter's renaming rules.
    pairs = {
        "norm.weight": "norm.weight",
        "proj_in.bias": "proj_in.bias",
        "proj_out.weight": "proj_out.weight",
        "transformer_blocks.0.attention_blocks.0.to_q.weight": "transformer_blocks.0.attn1.to_q.weight",
        "transformer_blocks.0.attention_blocks.1.to_v.weight": "transformer_blocks.0.attn2.to_v.weight",
        "transformer_blocks.0.attention_blocks.1.to_out.0.bias": "transformer_blocks.0.attn2.to_out.0.bias",
        "transformer_blocks.0.norms.0.weight": "transformer_blocks.0.norm1.weight",
        "transformer_blocks.0.norms.1.bias": "transformer_blocks.0.norm2.bias",
        "transformer_blocks.0.ff_norm.weight": "transformer_blocks.0.norm3.weight",
        "transformer_blocks.0.ff.net.0.proj.weight": "transformer_blocks.0.ff.net.0.proj.weight",
        "transformer_blocks.0.ff.net.2.bias": "transformer_blocks.0.ff.net.2.bias",
        "transformer_blocks.0.attention_blocks.1.pos_encoder.positional_encoding": "transformer_blocks.0.pos_embed.pe",
    }
    for hotshot_name, diffusers_name in pairs.items():
        assert torch.equal(converted[f"{target}.{diffusers_name}"], hotshot[f"{source}.{hotshot_name}"])
    # Every source tensor is used; diffusers keeps one position table where Hotshot-XL has two.
    tables = sum(key.endswith("positional_encoding") for key in hotshot)
    assert len(converted) == len(hotshot) - tables // 2
    assert adapter.mid_block is None and adapter.config.motion_max_seq_length == 24


def test_temporal_layer_computes_what_hotshot_does(motion_unet, sdxl_unet, hotshot):
    from diffusers import UNetMotionModel

    stock = UNetMotionModel.from_unet2d(sdxl_unet, hotshot_motion_adapter(hotshot, sdxl_unet.config)).eval()
    for source, target in (
        ("down_blocks.0.temporal_attentions.0", "down_blocks.0.motion_modules.0"),
        ("up_blocks.1.temporal_attentions.1", "up_blocks.1.motion_modules.1"),
    ):
        width = hotshot[f"{source}.norm.weight"].shape[0]
        clip = clip_with_frames_apart(2, width)
        expected = reference_temporal_layer(hotshot, source, clip)
        ours = _run_motion_module(motion_unet.get_submodule(target), clip)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        # diffusers' own norm pools the clip's frames: that is what apply_hotshot_norms changes.
        plain = _run_motion_module(stock.get_submodule(target), clip)
        assert (plain - expected).abs().max() > 1e-2


def test_eight_frame_forward_pools_resnet_norms_per_clip(motion_unet):
    seen = {}
    norm = motion_unet.down_blocks[1].resnets[0].norm1
    handle = norm.register_forward_hook(lambda module, args, out: seen.update(x=args[0], out=out))
    batch = 2  # uncond and cond, as the denoiser calls it
    sample = clip_with_frames_apart(batch, 4, 8, 8)
    tokens = torch.randn(batch * HOTSHOT_CONTEXT, 8, 64)  # one prompt per frame, batch-major
    added = {"text_embeds": torch.randn(batch, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch)}
    try:
        out = motion_unet(sample, torch.tensor(500.0), tokens, added_cond_kwargs=added, return_dict=False)[0]
    finally:
        handle.remove()

    assert out.shape == sample.shape and torch.isfinite(out).all()
    bf, c, h, w = seen["x"].shape
    clips = seen["x"].reshape(batch, HOTSHOT_CONTEXT, c, h, w).transpose(1, 2)
    expected = F.group_norm(clips, norm.num_groups, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(seen["out"], expected.transpose(1, 2).reshape(bf, c, h, w))


def test_motion_unet_keeps_every_checkpoint_weight(motion_unet, sdxl_unet):
    # from_unet2d alone leaves SDXL's add_embedding (pooled text and sizes) at random init.
    ours = motion_unet.state_dict()
    for key, value in sdxl_unet.state_dict().items():
        assert torch.equal(ours[key], value), key


def test_sd15_unet_is_a_mismatch_naming_both(hotshot, tiny_models):
    from diffusers import UNet2DConditionModel

    sd15 = UNet2DConditionModel.load_config(tiny_models.checkpoint / "unet")
    with pytest.raises(UnsampleError) as caught:
        hotshot_motion_adapter(hotshot, sd15, "hsxl_temporal_layers.safetensors", "my-sd15")
    assert caught.value.code == ErrorCode.MODEL_MISMATCH
    message = caught.value.message
    assert "hsxl_temporal_layers.safetensors" in message and "my-sd15" in message
    assert "Hotshot-XL" in message and "SDXL" in message and "SD 1.5" in message


def test_incomplete_file_is_invalid(hotshot, sdxl_unet):
    broken = {key: value for key, value in hotshot.items() if not key.endswith("ff_norm.bias")}
    with pytest.raises(UnsampleError) as caught:
        hotshot_motion_adapter(broken, sdxl_unet.config)
    assert caught.value.code == ErrorCode.MODEL_INVALID


def _run_motion_module(module, clip: torch.Tensor) -> torch.Tensor:
    """A diffusers motion module takes frames stacked batch-major, (b * f, c, h, w)."""
    b, c, f, h, w = clip.shape
    out = module(clip.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w), num_frames=f)
    return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)
