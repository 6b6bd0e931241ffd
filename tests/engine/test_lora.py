"""LoRA files merged into the tiny SD 1.5 and SDXL models: the arithmetic, the names, the refusals."""

from types import SimpleNamespace

import pytest
import torch
from lora_format import Update, random_updates, rounded, write_kohya, write_peft

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.models import lora
from blender_unsample.engine.models.lora import apply_loras
from blender_unsample.engine.protocol import ErrorCode
from blender_unsample.engine.tiny_models import build_tiny_models

# The file's module name (as kohya-ss writes it) -> the model's module it must land on. Both the
# diffusers spelling and the original UNet's (input/middle/output_blocks) are used by real files.
SD15_NAMES = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    ),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    ),
    "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_out_0": (
        "unet.up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_out.0"
    ),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj": (
        "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"
    ),
    "lora_unet_down_blocks_0_attentions_0_proj_in": "unet.down_blocks.0.attentions.0.proj_in",  # 1x1 conv
    "lora_unet_up_blocks_1_resnets_0_conv1": "unet.up_blocks.1.resnets.0.conv1",  # 3x3 conv
    "lora_unet_input_blocks_1_0_out_layers_3": "unet.down_blocks.0.resnets.0.conv2",
    "lora_unet_output_blocks_1_1_conv": "unet.up_blocks.0.upsamplers.0.conv",  # no attention: upsampler at .1
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    "lora_te_text_model_encoder_layers_1_mlp_fc2": "text_encoder.text_model.encoder.layers.1.mlp.fc2",
}
SDXL_NAMES = {
    "lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_k": (
        "unet.down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k"
    ),
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v": (
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v"
    ),
    "lora_unet_input_blocks_4_0_op": "unet.down_blocks.1.downsamplers.0.conv",  # 3x3 conv
    "lora_unet_middle_block_1_proj_in": "unet.mid_block.attentions.0.proj_in",  # linear in SDXL
    "lora_unet_output_blocks_3_2_conv": "unet.up_blocks.1.upsamplers.0.conv",
    "lora_unet_output_blocks_0_0_skip_connection": "unet.up_blocks.0.resnets.0.conv_shortcut",  # 1x1 conv
    "lora_unet_output_blocks_4_0_emb_layers_1": "unet.up_blocks.2.resnets.0.time_emb_proj",
    "lora_unet_label_emb_0_0": "unet.add_embedding.linear_1",
    "lora_te1_text_model_encoder_layers_0_self_attn_k_proj": (
        "text_encoder.text_model.encoder.layers.0.self_attn.k_proj"
    ),
    "lora_te2_text_model_encoder_layers_1_mlp_fc1": "text_encoder_2.text_model.encoder.layers.1.mlp.fc1",
    "lora_te2_text_projection": "text_encoder_2.text_projection",
}
NAMES = {"sd15": SD15_NAMES, "sdxl": SDXL_NAMES}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_tiny_models")
    for family in NAMES:
        build_tiny_models(root, family)
    return root


@pytest.fixture
def load(tiny_root):
    """Fresh tiny models of a family, loaded as the pipeline loads them."""

    def make(family: str) -> SimpleNamespace:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        checkpoint = tiny_root / family / "checkpoint"
        models = SimpleNamespace(
            family=family,
            unet=UNet2DConditionModel.from_pretrained(checkpoint / "unet"),
            text_encoder=CLIPTextModel.from_pretrained(checkpoint / "text_encoder"),
            text_encoder_2=None,
        )
        if family == "sdxl":
            models.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(checkpoint / "text_encoder_2")
        return models

    return make


def module(models: SimpleNamespace, target: str) -> torch.nn.Module:
    component, _, path = target.partition(".")
    model = getattr(models, component)
    if component != "unet" and not hasattr(model, "text_model"):
        path = path.removeprefix("text_model.")  # transformers 5's CLIPTextModel has no wrapper
    return model.get_submodule(path)


def same_modules(models: SimpleNamespace, matched: dict[str, str], wanted: dict[str, str]) -> bool:
    """Both name the same modules (the report uses the model's own spelling)."""
    return matched.keys() == wanted.keys() and all(
        module(models, matched[name]) is module(models, wanted[name]) for name in wanted
    )


def targets(models: SimpleNamespace) -> dict:
    return {name: module(models, target) for name, target in NAMES[models.family].items()}


def weights(models: SimpleNamespace) -> dict[str, torch.Tensor]:
    return {target: module(models, target).weight.clone() for target in NAMES[models.family].values()}


def apply(models: SimpleNamespace, *loras):
    return apply_loras(loras, models.unet, models.text_encoder, models.text_encoder_2)


def assert_merged(models, before, expected: dict[str, torch.Tensor]) -> None:
    for name, target in NAMES[models.family].items():
        weight = module(models, target).weight
        want = before[target].double() + expected.get(name, 0.0).reshape(weight.shape)
        torch.testing.assert_close(weight.double(), want, rtol=1e-5, atol=1e-5, msg=f"{name} -> {target}")


def unet_output(models: SimpleNamespace) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    config = models.unet.config
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 7, config.cross_attention_dim, generator=generator)
    extra = {}
    if models.family == "sdxl":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 32, generator=generator),
            "time_ids": torch.ones(1, 6),
        }
    return models.unet(sample, 10, encoder_hidden_states=context, **extra).sample


# --- the arithmetic ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_merged_weights_are_w_plus_weight_alpha_over_rank_up_down(family, load, tmp_path):
    models = load(family)
    updates = random_updates(targets(models), rank=3, alpha=1.5, seed=2)
    path = write_kohya(tmp_path / "style.safetensors", updates)
    before = weights(models)

    report = apply(models, (path, 0.7))

    expected = {name: 0.7 * u.delta() for name, u in rounded(updates).items()}
    assert_merged(models, before, expected)
    (applied,) = report.applied
    assert same_modules(models, applied.matched, NAMES[family])
    assert applied.family == family
    assert report.warnings == []


def test_two_loras_add_up(load, tmp_path):
    models = load("sd15")
    names = list(SD15_NAMES)
    first = random_updates({n: module(models, SD15_NAMES[n]) for n in names[:6]}, rank=2, alpha=2.0, seed=3)
    second = random_updates({n: module(models, SD15_NAMES[n]) for n in names[3:]}, rank=4, alpha=1.0, seed=4)
    before = weights(models)

    apply(
        models,
        (write_kohya(tmp_path / "a.safetensors", first), 0.5),
        (write_kohya(tmp_path / "b.safetensors", second), -1.2),
    )

    expected: dict[str, torch.Tensor] = {}
    for updates, weight in ((rounded(first), 0.5), (rounded(second), -1.2)):
        for name, update in updates.items():
            expected[name] = expected.get(name, 0.0) + weight * update.delta()
    assert_merged(models, before, expected)


def test_weight_zero_changes_nothing_and_skips_the_file(load, tmp_path):
    models = load("sd15")
    path = write_kohya(tmp_path / "style.safetensors", random_updates(targets(models)))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file" * 10)
    state = {k: v.clone() for k, v in models.unet.state_dict().items()}

    report = apply(models, (path, 0.0), (garbage, 0))

    assert report.applied == [] and report.warnings == []
    for key, value in models.unet.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_unet_and_text_encoder_outputs_change(family, load, tmp_path):
    models = load(family)
    path = write_kohya(tmp_path / "style.safetensors", random_updates(targets(models), seed=5))
    unet_before = unet_output(models)
    tokens = torch.tensor([[0, 40, 41, 42, 1]])
    text_before = models.text_encoder(tokens).last_hidden_state

    apply(models, (path, 1.0))

    assert (unet_output(models) - unet_before).abs().max() > 1e-3
    assert (models.text_encoder(tokens).last_hidden_state - text_before).abs().max() > 1e-3


def test_fp16_models_are_merged_in_float32_then_rounded(load, tmp_path):
    models = load("sd15")
    models.unet.half()
    name, target = "lora_unet_up_blocks_1_resnets_0_conv1", SD15_NAMES["lora_unet_up_blocks_1_resnets_0_conv1"]
    updates = random_updates({name: module(models, target)}, seed=6)
    before = module(models, target).weight.clone()

    apply(models, (write_kohya(tmp_path / "style.safetensors", updates), 0.8))

    want = (before.double() + 0.8 * rounded(updates)[name].delta()).half()
    assert module(models, target).weight.dtype == torch.float16
    # Within fp16's own rounding (float32 and float64 sums can land on either side of a tie).
    torch.testing.assert_close(module(models, target).weight, want, rtol=1e-3, atol=1e-3)


def test_peft_layout_with_alpha_in_the_header(load, tmp_path):
    models = load("sdxl")
    picked = [
        "unet.down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k",
        "unet.up_blocks.0.resnets.0.conv_shortcut",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        "text_encoder_2.text_model.encoder.layers.1.mlp.fc1",
    ]
    updates = random_updates({target: module(models, target) for target in picked}, rank=2, seed=7)
    before = {target: module(models, target).weight.clone() for target in picked}

    report = apply(models, (write_peft(tmp_path / "pytorch_lora_weights.safetensors", updates, lora_alpha=4), 1.0))

    assert same_modules(models, report.applied[0].matched, {target: target for target in picked})
    for target, update in updates.items():
        weight = module(models, target).weight
        delta = Update(update.down, update.up, alpha=4.0).delta().reshape(weight.shape)
        torch.testing.assert_close(weight.double(), before[target].double() + delta, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "name", "kernel"),
    [
        ("sd15", "lora_unet_down_blocks_0_attentions_0_proj_in", ()),  # a linear update of a 1x1 conv
        ("sdxl", "lora_unet_middle_block_1_proj_in", (1, 1)),  # a 1x1 conv update of a linear layer
    ],
)
def test_linear_and_1x1_updates_fit_either_kind_of_projection(family, name, kernel, load, tmp_path):
    models = load(family)
    weight = module(models, NAMES[family][name]).weight
    out_features, in_features = weight.shape[:2]
    update = Update(torch.randn(2, in_features, *kernel), torch.randn(out_features, 2, *kernel), alpha=0.0)
    before = weight.clone()

    apply(models, (write_kohya(tmp_path / "proj.safetensors", {name: update}, dtype=torch.float32), 1.0))

    # alpha 0 means "the rank", as kohya-ss reads it: a scale of 1.
    delta = Update(update.down, update.up, alpha=2.0).delta().reshape(weight.shape)
    torch.testing.assert_close(weight.double(), before.double() + delta, rtol=1e-5, atol=1e-5)


# --- names -----------------------------------------------------------------------------------------------


def test_unknown_modules_are_warned_about_and_the_rest_merged(load, tmp_path):
    models = load("sd15")
    updates = random_updates(targets(models), seed=8)
    stray = Update(torch.ones(2, 32), torch.ones(32, 2), 1.0)
    path = write_kohya(tmp_path / "style.safetensors", updates | {"lora_unet_down_blocks_9_nothing_here": stray})

    report = apply(models, (path, 1.0))

    assert same_modules(models, report.applied[0].matched, SD15_NAMES)
    assert list(report.applied[0].left_out) == ["lora_unet_down_blocks_9_nothing_here"]
    (warning,) = report.warnings
    assert "style.safetensors" in warning and "lora_unet_down_blocks_9_nothing_here" in warning


def test_dora_updates_are_left_out_not_merged_wrongly(load, tmp_path):
    models = load("sd15")
    name = "lora_unet_up_blocks_1_resnets_0_conv1"
    updates = random_updates(targets(models), seed=9)
    path = write_kohya(tmp_path / "dora.safetensors", updates)
    from safetensors.torch import load_file, save_file

    tensors = load_file(path) | {f"{name}.dora_scale": torch.ones(1, 96, 1, 1, dtype=torch.float16)}
    save_file(tensors, str(path))
    before = module(models, SD15_NAMES[name]).weight.clone()

    report = apply(models, (path, 1.0))

    assert "DoRA" in report.applied[0].left_out[name]
    assert torch.equal(module(models, SD15_NAMES[name]).weight, before)


def test_nothing_matching_is_an_error(load, tmp_path):
    models = load("sd15")
    stray = Update(torch.ones(2, 32), torch.ones(32, 2), 1.0)
    path = write_kohya(tmp_path / "elsewhere.safetensors", {"lora_unet_down_blocks_9_nothing_here": stray})

    with pytest.raises(UnsampleError) as caught:
        apply(models, (path, 1.0))

    assert caught.value.code == ErrorCode.MODEL_MISMATCH
    assert "elsewhere.safetensors" in caught.value.message


def _meta_unet(**config):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def test_original_unet_names_of_the_real_architectures():
    """Names seen in real kohya files, on the real SD 1.5 and SDXL layouts (weights on the meta device)."""
    sd15 = _meta_unet(cross_attention_dim=768)
    sdxl = _meta_unet(
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    expected = {
        sd15: {
            "lora_unet_input_blocks_8_1_transformer_blocks_0_attn2_to_k": (
                "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k"
            ),
            "lora_unet_input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
            "lora_unet_middle_block_1_proj_in": "mid_block.attentions.0.proj_in",
            "lora_unet_output_blocks_2_1_conv": "up_blocks.0.upsamplers.0.conv",
            "lora_unet_output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
            "lora_unet_output_blocks_11_1_proj_out": "up_blocks.3.attentions.2.proj_out",
            "lora_unet_up_blocks_3_attentions_2_proj_out": "up_blocks.3.attentions.2.proj_out",
            "lora_unet_down_blocks_1_resnets_0_conv_shortcut": "down_blocks.1.resnets.0.conv_shortcut",
        },
        sdxl: {
            "lora_unet_input_blocks_0_0": "conv_in",
            "lora_unet_time_embed_0": "time_embedding.linear_1",
            "lora_unet_label_emb_0_2": "add_embedding.linear_2",
            "lora_unet_input_blocks_4_0_emb_layers_1": "down_blocks.1.resnets.0.time_emb_proj",
            "lora_unet_input_blocks_6_0_op": "down_blocks.1.downsamplers.0.conv",
            "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k": (
                "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k"
            ),
            "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2": (
                "mid_block.attentions.0.transformer_blocks.9.ff.net.2"
            ),
            "lora_unet_middle_block_2_in_layers_2": "mid_block.resnets.1.conv1",
            "lora_unet_output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
            "lora_unet_output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
            "lora_unet_output_blocks_8_0_skip_connection": "up_blocks.2.resnets.2.conv_shortcut",
            "lora_unet_out_2": "conv_out",
        },
    }
    for unet, names in expected.items():
        _, aliases = lora._targets(unet, None, None)
        assert {name: aliases.get(name) for name in names} == {name: f"unet.{t}" for name, t in names.items()}


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lora_family", "model_family"), [("sdxl", "sd15"), ("sd15", "sdxl")])
def test_a_lora_of_the_other_family_is_refused_before_anything_changes(lora_family, model_family, load, tmp_path):
    models = load(model_family)
    fitting = write_kohya(tmp_path / "fits.safetensors", random_updates(targets(models), seed=10))
    other = write_kohya(tmp_path / "other.safetensors", random_updates(targets(load(lora_family)), seed=11))
    state = {k: v.clone() for k, v in models.unet.state_dict().items()}

    with pytest.raises(UnsampleError) as caught:
        apply(models, (fitting, 1.0), (other, 1.0))

    names = {"sd15": "SD 1.5", "sdxl": "SDXL"}
    assert caught.value.code == ErrorCode.MODEL_MISMATCH
    message = caught.value.message
    assert "other.safetensors" in message
    assert f"is for {names[lora_family]}" in message and f"the checkpoint is {names[model_family]}" in message
    for key, value in models.unet.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize(("lora_family", "model_family"), [("sdxl", "sd15"), ("sd15", "sdxl")])
def test_a_job_with_a_lora_of_the_other_family_names_both_files_and_families(
    lora_family, model_family, tiny_models, tiny_sdxl, load, tmp_path
):
    from blender_unsample.engine.models.components import load_components
    from blender_unsample.engine.protocol import JobSpec

    other = write_kohya(tmp_path / "other.safetensors", random_updates(targets(load(lora_family)), seed=3))
    checkpoint = {"sd15": tiny_models, "sdxl": tiny_sdxl}[model_family].checkpoint
    spec = JobSpec(
        frames="in", out="out", prompt="x", family=model_family, model=str(checkpoint), motion_adapter="none",
        control="none", loras=[str(other)], device="cpu",
    )  # fmt: skip

    with pytest.raises(UnsampleError) as caught:
        load_components(spec, torch.float32, torch.float32)

    names = {"sd15": "SD 1.5", "sdxl": "SDXL"}
    assert caught.value.code == ErrorCode.MODEL_MISMATCH
    message = caught.value.message
    assert f"the LoRA {other} is for {names[lora_family]}" in message, message
    assert f"the checkpoint {checkpoint} is {names[model_family]}" in message, message


@pytest.mark.parametrize(
    ("width", "model_family", "named"), [(2048, "sd15", "SDXL"), (768, "sdxl", "SD 1.5"), (1024, "sd15", "SD 2.x")]
)
def test_real_cross_attention_widths_tell_the_family(width, model_family, named, load, tmp_path):
    models = load(model_family)
    update = Update(torch.ones(4, width), torch.ones(640, 4), 4.0)
    path = write_kohya(
        tmp_path / "unet_only.safetensors", {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": update}
    )

    with pytest.raises(UnsampleError) as caught:
        apply(models, (path, 1.0))

    assert caught.value.code == ErrorCode.MODEL_MISMATCH
    assert f"is for {named}" in caught.value.message


def test_shapes_that_do_not_fit_are_a_mismatch(load, tmp_path):
    models = load("sd15")
    update = Update(torch.ones(2, 48), torch.ones(32, 2), 1.0)  # to_q takes 32 features, not 48
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = write_kohya(tmp_path / "wide.safetensors", {name: update})

    with pytest.raises(UnsampleError) as caught:
        apply(models, (path, 1.0))

    assert caught.value.code == ErrorCode.MODEL_MISMATCH
    assert "wide.safetensors" in caught.value.message and "to_q" in caught.value.message


def _truncated(tmp_path, models):
    data = write_kohya(tmp_path / "whole.safetensors", random_updates(targets(models))).read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _garbage(tmp_path, models):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(bytes(range(256)) * 8)
    return path


def _empty(tmp_path, models):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    return path


def _not_a_lora(tmp_path, models):
    from safetensors.torch import save_file

    path = tmp_path / "unet_weights.safetensors"
    save_file({k: v.contiguous() for k, v in list(models.unet.state_dict().items())[:5]}, str(path))
    return path


def _broken_pair(tmp_path, models):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    return write_kohya(tmp_path / "broken.safetensors", {name: Update(torch.ones(2, 32), torch.ones(32, 3), 1.0)})


def _loha(tmp_path, models):
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {f"{name}.{part}": torch.ones(2, 32) for part in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    path = tmp_path / "loha.safetensors"
    save_file(tensors | {f"{name}.alpha": torch.tensor(2.0)}, str(path))
    return path


@pytest.mark.parametrize("make", [_truncated, _garbage, _empty, _not_a_lora, _broken_pair, _loha])
def test_unreadable_or_non_lora_files_are_invalid(make, load, tmp_path):
    models = load("sd15")
    path = make(tmp_path, models)

    with pytest.raises(UnsampleError) as caught:
        apply(models, (path, 1.0))

    assert caught.value.code == ErrorCode.MODEL_INVALID
    assert path.name in caught.value.message
    if make is _loha:
        assert "LoHa" in caught.value.message


def test_a_missing_file_is_not_found(load, tmp_path):
    with pytest.raises(UnsampleError) as caught:
        apply(load("sd15"), (tmp_path / "nowhere.safetensors", 1.0))

    assert caught.value.code == ErrorCode.MODEL_NOT_FOUND
    assert "nowhere.safetensors" in caught.value.message


# --- the same weights as diffusers' own pipeline.load_lora_weights + fuse_lora -----------------------------

# Files as real trainers write them, in the names diffusers' own conversion reads right: kohya's SD 1.x
# files in diffusers' module names, its SDXL files in the original UNet's; PEFT files as diffusers saves
# them with transformers 5 (diffusers' own loader takes the header's text_model.* target names literally).
KOHYA_AS_DIFFUSERS_READS = {
    "sd15": {n: t for n, t in SD15_NAMES.items() if "_blocks_1_0_" not in n and "output_blocks" not in n},
    "sdxl": {n: t for n, t in SDXL_NAMES.items() if "down_blocks" not in n},
}
# diffusers' own conversion tells a kohya text encoder update's layout by its out_proj (as real files,
# which adapt q, k, v and out_proj, all have); without it, it drops or refuses the encoder's attention.
KOHYA_AS_DIFFUSERS_READS["sd15"]["lora_te_text_model_encoder_layers_0_self_attn_out_proj"] = (
    "text_encoder.text_model.encoder.layers.0.self_attn.out_proj"
)
KOHYA_AS_DIFFUSERS_READS["sdxl"]["lora_te1_text_model_encoder_layers_0_self_attn_out_proj"] = (
    "text_encoder.text_model.encoder.layers.0.self_attn.out_proj"
)
PEFT_TARGETS = {
    "sd15": [
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "unet.up_blocks.1.resnets.0.conv1",
        "unet.down_blocks.0.attentions.0.proj_in",
        "text_encoder.encoder.layers.0.self_attn.q_proj",
        "text_encoder.encoder.layers.1.mlp.fc2",
    ],
    "sdxl": [
        "unet.down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k",
        "unet.up_blocks.0.resnets.0.conv_shortcut",
        "unet.down_blocks.1.downsamplers.0.conv",
        "text_encoder.encoder.layers.0.self_attn.q_proj",
        # diffusers' text encoder loader cannot tell the layout of a PEFT file whose update of an
        # encoder has no attention layer, so each encoder's has one here.
        "text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj",  # still wrapped in transformers 5
        "text_encoder_2.text_model.encoder.layers.1.mlp.fc1",
    ],
}


def two_files(models: SimpleNamespace, layout: str, tmp_path) -> list[tuple]:
    """Two LoRAs of one layout over overlapping modules, of other ranks and alphas, weighted 0.7 and -0.4."""
    if layout == "kohya":
        names = KOHYA_AS_DIFFUSERS_READS[models.family]
        first = random_updates({n: module(models, t) for n, t in names.items()}, rank=3, alpha=1.5, seed=21)
        second = random_updates({n: module(models, t) for n, t in list(names.items())[2:]}, rank=2, seed=22)
        return [
            (write_kohya(tmp_path / "a.safetensors", first), 0.7),
            (write_kohya(tmp_path / "b.safetensors", second), -0.4),
        ]
    picked = PEFT_TARGETS[models.family]
    first = random_updates({t: module(models, t) for t in picked}, rank=2, seed=23)
    second = random_updates({t: module(models, t) for t in picked[1:]}, rank=2, seed=24)
    return [
        (write_peft(tmp_path / "a_pytorch_lora_weights.safetensors", first, lora_alpha=4), 0.7),
        (write_peft(tmp_path / "b_pytorch_lora_weights.safetensors", second, lora_alpha=1), -0.4),
    ]


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # diffusers, several adapters
@pytest.mark.parametrize("layout", ["kohya", "peft"])
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_merged_weights_equal_diffusers_fuse_lora_bit_for_bit(family, layout, load, tiny_root, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    models = load(family)
    loras = two_files(models, layout, tmp_path)
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline = pipeline_class.from_pretrained(tiny_root / family / "checkpoint")
    names = []
    for index, (path, _) in enumerate(loras):
        pipeline.load_lora_weights(str(path), adapter_name=f"lora{index}")
        names.append(f"lora{index}")
    pipeline.set_adapters(names, [weight for _, weight in loras])
    pipeline.fuse_lora(adapter_names=names)
    pipeline.unload_lora_weights()
    before = {key: value.clone() for key, value in models.unet.state_dict().items()}

    apply(models, *loras)

    components = ["unet", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    changed = 0
    for component in components:
        ours, theirs = getattr(models, component).state_dict(), getattr(pipeline, component).state_dict()
        assert ours.keys() == theirs.keys(), component  # no adapter layers left behind
        for key, value in ours.items():
            assert torch.equal(value, theirs[key]), f"{component}.{key}"
    changed = sum(not torch.equal(value, before[key]) for key, value in models.unet.state_dict().items())
    assert changed >= 3  # the files did change the UNet (the comparison is not between two untouched models)


def test_a_file_diffusers_cannot_load_changes_nothing_and_leaves_no_adapter(load, tmp_path):
    """Past our checks, a header whose rank does not fit the tensors fails in peft: the good file
    before it is not merged either, and no adapter layer stays in the models."""
    import json

    from safetensors.torch import load_file, save_file

    models = load("sd15")
    good = write_kohya(tmp_path / "good.safetensors", random_updates(targets(models), seed=30))
    picked = ["unet.down_blocks.0.attentions.0.proj_in", "text_encoder.encoder.layers.0.self_attn.q_proj"]
    bad = write_peft(tmp_path / "bad.safetensors", random_updates({t: module(models, t) for t in picked}), 1.0)
    settings = {"unet.r": 4, "unet.lora_alpha": 4, "text_encoder.r": 4, "text_encoder.lora_alpha": 4}  # rank 2 inside
    save_file(load_file(bad), str(bad), metadata={"lora_adapter_metadata": json.dumps(settings)})
    unet_state = {k: v.clone() for k, v in models.unet.state_dict().items()}
    text_state = {k: v.clone() for k, v in models.text_encoder.state_dict().items()}

    with pytest.raises(UnsampleError) as caught:
        apply(models, (good, 1.0), (bad, 1.0))

    assert caught.value.code == ErrorCode.MODEL_INVALID
    assert "bad.safetensors" in caught.value.message
    for model, state in ((models.unet, unet_state), (models.text_encoder, text_state)):
        assert model.state_dict().keys() == state.keys()
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key


def test_without_peft_a_lora_is_a_setup_error_naming_it(load, tmp_path, monkeypatch):
    import importlib.util

    models = load("sd15")
    path = write_kohya(tmp_path / "style.safetensors", random_updates(targets(models)))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else find_spec(name, *a))

    with pytest.raises(UnsampleError) as caught:
        apply(models, (path, 1.0))

    assert caught.value.code == ErrorCode.WORKER_SETUP and "peft" in caught.value.message
    assert apply(models, (path, 0.0)).applied == []  # a job whose LoRAs are all off needs no peft
