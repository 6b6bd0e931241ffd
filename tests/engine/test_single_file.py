"""Single-file checkpoints, motion modules, ControlNets and VAEs, written in their original layouts
from the tiny diffusers models and loaded back through blender_unsample.engine.models.single_file."""

import shutil
from pathlib import Path

import pytest
import torch
from formats import animatediff, animatediff_release, ldm_controlnet, ldm_vae, original_checkpoint, prefixed
from safetensors.torch import save_file

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.models import families, motion_layout, single_file, weights_file
from blender_unsample.engine.models.families import detect
from blender_unsample.engine.protocol import ErrorCode
from blender_unsample.engine.tiny_models import build_tiny_models

ENCODERS = {"sd15": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of each test's own, and the Hub switched off: no test reads the
    user's cache or reaches the network."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="session")
def tiny(tiny_models, tmp_path_factory):
    """The tiny model sets of both families, by family."""
    return {"sd15": tiny_models, "sdxl": build_tiny_models(tmp_path_factory.mktemp("tiny_sdxl"), "sdxl")}


@pytest.fixture(scope="session")
def originals(tiny) -> dict:
    """The tiny diffusers models the files are written from, by family and part."""
    from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    models = {}
    for family, paths in tiny.items():
        folder = paths.checkpoint
        models[family] = {
            "unet": UNet2DConditionModel.from_pretrained(folder / "unet"),
            "vae": AutoencoderKL.from_pretrained(folder / "vae"),
            "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder"),
            "adapter": MotionAdapter.from_pretrained(paths.motion_adapter),
            "controlnet": ControlNetModel.from_pretrained(paths.controlnet),
        }
        if family == "sdxl":
            models[family]["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")
    return models


@pytest.fixture(scope="session")
def checkpoint_files(originals, tmp_path_factory) -> dict[str, Path]:
    """One .safetensors checkpoint per family, laid out as Civitai ships them."""
    folder = tmp_path_factory.mktemp("checkpoints")
    files = {}
    for family in ("sd15", "sdxl"):
        state = original_checkpoint(originals[family], family)
        # Real LDM files also carry the training schedule; loaders must pass over it.
        state["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
        files[family] = save(state, folder / f"tiny_{family}.safetensors")
    return files


@pytest.fixture(scope="session")
def sdxl_with_unequal_encoders(originals, tiny, tmp_path_factory) -> tuple[Path, Path]:
    """(file, config folder) of a tiny SDXL whose second text encoder is wider than its first, as
    SDXL's are (1280 and 768 wide). diffusers' pipeline loader tells the two apart by width alone:
    given the tiny set, where both are 32 wide, it fills the second with the first's weights."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = tmp_path_factory.mktemp("sdxl_unequal_encoders")
    configs = folder / "configs"
    shutil.copytree(tiny["sdxl"].checkpoint, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    wide = CLIPTextConfig.from_pretrained(configs / "text_encoder_2", hidden_size=48, intermediate_size=96)
    wide.save_pretrained(configs / "text_encoder_2")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        encoder = CLIPTextModelWithProjection(wide)
    state = original_checkpoint(originals["sdxl"] | {"text_encoder_2": encoder}, "sdxl")
    return save(state, folder / "tiny_sdxl_unequal.safetensors"), configs


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({key: value.detach().clone().contiguous() for key, value in state.items()}, path)
    else:
        torch.save({"state_dict": state, "global_step": 7}, path)  # as the training scripts save
    return path


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def assert_same_weights(expected, loaded) -> None:
    want, got = expected.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    different = [key for key in want if not torch.equal(want[key], got[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_error(excinfo, code: ErrorCode, *words: str) -> None:
    error = excinfo.value
    assert error.code == code, error.message
    for word in words:
        assert word in error.message, f"{word!r} not in: {error.message}"


def cache_configs(cache: Path, repo_id: str, source: Path) -> Path:
    """Lay out ``source``'s configs and tokenizer files as the Hugging Face cache keeps ``repo_id``."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = storage / "snapshots" / commit
    for file in source.rglob("*"):
        if file.suffix in (".json", ".txt"):
            target = snapshot / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


# --- checkpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_checkpoint_loads_with_the_weights_it_was_written_from(family, tiny, originals, checkpoint_files):
    loaded = single_file.load_checkpoint(checkpoint_files[family], tiny[family].checkpoint)

    assert loaded.family == family
    for part in ("unet", "vae", *ENCODERS[family]):
        assert_same_weights(originals[family][part], getattr(loaded, part))
    assert loaded.tokenizer("a cat").input_ids[0] == loaded.tokenizer.bos_token_id
    assert (loaded.tokenizer_2 is not None) == (family == "sdxl")
    assert (loaded.text_encoder_2 is not None) == (family == "sdxl")
    assert loaded.scheduler.config.prediction_type == "epsilon"
    assert loaded.scheduler.alphas_cumprod.shape == (1000,)
    assert loaded.config == tiny[family].checkpoint


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_components_equal_what_diffusers_own_single_file_loader_gives(
    family, tiny, checkpoint_files, sdxl_with_unequal_encoders
):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sd15":
        path, configs = checkpoint_files["sd15"], tiny["sd15"].checkpoint
        reference = StableDiffusionPipeline.from_single_file(
            str(path), config=str(configs), local_files_only=True, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip
    else:
        path, configs = sdxl_with_unequal_encoders
        reference = StableDiffusionXLPipeline.from_single_file(
            str(path), config=str(configs), local_files_only=True, add_watermarker=False
        )

    loaded = single_file.load_checkpoint(path, configs)

    for part in ("unet", "vae", *ENCODERS[family]):
        assert_same_weights(getattr(reference, part), getattr(loaded, part))
    assert loaded.text_encoder.config.hidden_size == 32
    if family == "sdxl":  # the encoders' own widths, each from its part of the file
        assert loaded.text_encoder_2.config.hidden_size == 48


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_family_is_read_from_the_file_header(family, checkpoint_files, tmp_path):
    assert detect.checkpoint_file_family(checkpoint_files[family]) == family
    pickled = save(checkpoint_state(checkpoint_files[family]), tmp_path / "model.ckpt")
    assert detect.checkpoint_file_family(pickled) == family


def test_a_ckpt_of_plain_tensors_loads_weights_only(tiny, originals, checkpoint_files, tmp_path):
    pickled = save(checkpoint_state(checkpoint_files["sd15"]), tmp_path / "model.ckpt")

    loaded = single_file.load_checkpoint(pickled, tiny["sd15"].checkpoint)

    assert loaded.family == "sd15"
    assert_same_weights(originals["sd15"]["unet"], loaded.unet)
    assert_same_weights(originals["sd15"]["text_encoder"], loaded.text_encoder)


def test_clip_weights_named_without_text_model_load_too(tiny, originals, checkpoint_files, tmp_path):
    prefix = "cond_stage_model.transformer."
    state = {
        key.replace(prefix + "text_model.", prefix): value
        for key, value in checkpoint_state(checkpoint_files["sd15"]).items()
    }

    loaded = single_file.load_checkpoint(save(state, tmp_path / "old.safetensors"), tiny["sd15"].checkpoint)

    assert_same_weights(originals["sd15"]["text_encoder"], loaded.text_encoder)


def test_a_half_precision_file_loads_in_the_dtype_asked_for(tiny, originals, checkpoint_files, tmp_path):
    half = {key: value.half() for key, value in checkpoint_state(checkpoint_files["sd15"]).items()}
    path = save(half, tmp_path / "fp16.safetensors")

    as_float = single_file.load_checkpoint(path, tiny["sd15"].checkpoint)
    as_half = single_file.load_checkpoint(path, tiny["sd15"].checkpoint, dtype=torch.float16, vae_dtype=torch.float32)

    assert as_float.unet.dtype == torch.float32 and as_half.unet.dtype == torch.float16
    assert as_half.vae.dtype == torch.float32
    weight = originals["sd15"]["unet"].conv_in.weight
    assert torch.equal(as_float.unet.conv_in.weight, weight.half().float())


def test_a_v_prediction_marker_sets_the_prediction_type(tiny, checkpoint_files, tmp_path):
    state = checkpoint_state(checkpoint_files["sdxl"]) | {"v_pred": torch.tensor([])}
    path = save(state, tmp_path / "vpred.safetensors")

    loaded = single_file.load_checkpoint(path, tiny["sdxl"].checkpoint)

    assert loaded.scheduler.config.prediction_type == "v_prediction"


def test_a_checkpoint_without_a_vae_loads_without_one(tiny, checkpoint_files, tmp_path):
    state = {k: v for k, v in checkpoint_state(checkpoint_files["sd15"]).items() if "first_stage" not in k}

    loaded = single_file.load_checkpoint(save(state, tmp_path / "novae.safetensors"), tiny["sd15"].checkpoint)

    assert loaded.vae is None and loaded.unet is not None


def test_a_checkpoint_missing_weights_is_refused(tiny, checkpoint_files, tmp_path):
    state = checkpoint_state(checkpoint_files["sd15"])
    del state["model.diffusion_model.out.2.weight"]  # the UNet's last convolution
    path = save(state, tmp_path / "pruned.safetensors")

    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(path, tiny["sd15"].checkpoint)
    assert_error(excinfo, ErrorCode.MODEL_INVALID, "pruned.safetensors", "lacks some of the UNet's weights")


def test_a_text_encoder_missing_weights_is_refused_by_name(tiny, checkpoint_files, tmp_path):
    state = checkpoint_state(checkpoint_files["sd15"])
    del state["cond_stage_model.transformer.text_model.final_layer_norm.weight"]
    path = save(state, tmp_path / "pruned.safetensors")

    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(path, tiny["sd15"].checkpoint)
    assert_error(excinfo, ErrorCode.MODEL_INVALID, "pruned.safetensors", "text encoder", "final_layer_norm.weight")


def unet_keys(channels: int = 4) -> dict[str, tuple[int, ...]]:
    return {"model.diffusion_model.input_blocks.0.0.weight": (320, channels, 3, 3)}


@pytest.mark.parametrize(
    ("shapes", "words"),
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, ["a LoRA"]),
        ({"down_blocks.0.motion_modules.0.temporal_transformer.norm.weight": (320,)}, ["motion module"]),
        ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}, ["a VAE"]),
        ({"control_model.input_hint_block.0.weight": (16, 3, 3, 3)}, ["a ControlNet"]),
        ({"something.else": (3,)}, ["'something.else'"]),
        (unet_keys(9) | {"cond_stage_model.transformer.x": (1,)}, ["inpainting", "9 channels"]),
        (unet_keys() | {"cond_stage_model.model.positional_embedding": (77, 1024)}, ["2.x"]),
        (unet_keys() | {"conditioner.embedders.0.model.text_projection": (1280, 1280)}, ["refiner"]),
        (unet_keys(), ["no text encoder"]),
    ],
)
def test_other_files_are_refused_as_checkpoints_saying_what_they_seem_to_be(shapes, words):
    with pytest.raises(UnsampleError) as excinfo:
        detect.checkpoint_family(shapes, "model.safetensors")
    assert_error(excinfo, ErrorCode.MODEL_INVALID, "model.safetensors", *words)


# --- configs, offline -----------------------------------------------------------------------------


def test_configs_come_from_the_hugging_face_cache_of_the_reference_repo(hub_cache, tiny, originals, checkpoint_files):
    snapshot = cache_configs(hub_cache, families.family("sd15").checkpoint_config_repo, tiny["sd15"].checkpoint)

    loaded = single_file.load_checkpoint(checkpoint_files["sd15"])

    assert loaded.config == snapshot
    assert_same_weights(originals["sd15"]["unet"], loaded.unet)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_missing_configs_name_the_repo_and_how_to_get_it(family, checkpoint_files):
    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(checkpoint_files[family])
    repo = families.family(family).checkpoint_config_repo
    assert_error(excinfo, ErrorCode.MODEL_NOT_FOUND, repo, "not in the Hugging Face cache", "--allow-download")
    assert "config folder" in excinfo.value.message


def test_a_download_that_cannot_happen_says_so(checkpoint_files):
    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(checkpoint_files["sdxl"], allow_download=True)
    assert_error(excinfo, ErrorCode.MODEL_NOT_FOUND, "cannot download", families.family("sdxl").checkpoint_config_repo)


def test_a_config_folder_that_does_not_exist_is_named(checkpoint_files, tmp_path):
    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(checkpoint_files["sd15"], tmp_path / "no such folder")
    assert_error(excinfo, ErrorCode.MODEL_NOT_FOUND, "no such folder")


def test_a_config_folder_of_the_wrong_kind_is_named_with_what_it_lacks(tiny, checkpoint_files):
    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(checkpoint_files["sdxl"], tiny["sdxl"].motion_adapter)
    assert_error(
        excinfo, ErrorCode.MODEL_NOT_FOUND, str(tiny["sdxl"].motion_adapter), "unet/config.json", "tokenizer_2"
    )


def test_an_incomplete_cached_copy_counts_as_missing(hub_cache, tiny, checkpoint_files):
    snapshot = cache_configs(hub_cache, families.family("sd15").checkpoint_config_repo, tiny["sd15"].checkpoint)
    (snapshot / "unet" / "config.json").unlink()

    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(checkpoint_files["sd15"])
    assert_error(excinfo, ErrorCode.MODEL_NOT_FOUND, families.family("sd15").checkpoint_config_repo, "--allow-download")


def test_configs_of_the_other_family_do_not_fit(tiny, checkpoint_files):
    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(checkpoint_files["sd15"], tiny["sdxl"].checkpoint)
    assert_error(excinfo, ErrorCode.MODEL_MISMATCH, "tiny_sd15.safetensors", str(tiny["sdxl"].checkpoint))


def test_a_text_encoder_that_does_not_fit_its_config_names_the_tensor(checkpoint_files, sdxl_with_unequal_encoders):
    _, wider_second_encoder = sdxl_with_unequal_encoders

    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(checkpoint_files["sdxl"], wider_second_encoder)
    assert_error(
        excinfo, ErrorCode.MODEL_MISMATCH, "text encoder 2", "tiny_sdxl.safetensors", "token_embedding.weight", "48"
    )


# --- unsafe, damaged and wrong files --------------------------------------------------------------


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "the payload ran"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"weight": torch.ones(2)}, "extra": Payload()}, path)

    for load in (weights_file.read_state_dict, single_file.load_checkpoint, single_file.load_motion_module):
        with pytest.raises(UnsampleError) as excinfo:
            load(path)
        assert_error(
            excinfo, ErrorCode.MODEL_INVALID, "model.ckpt", "run code", "nothing in it was run", ".safetensors"
        )
    assert not marker.exists()
    # The payload is real: an ordinary (unsafe) load runs it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_truncated_file_is_refused(suffix, checkpoint_files, tmp_path):
    whole = save(checkpoint_state(checkpoint_files["sd15"]), tmp_path / f"whole{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(cut, tmp_path)
    assert_error(excinfo, ErrorCode.MODEL_INVALID, cut.name, "cut short")


def test_a_text_file_named_safetensors_is_refused(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("Download the model from the link below.\n" * 20)

    for load in (single_file.load_checkpoint, single_file.load_motion_module, detect.checkpoint_file_family):
        with pytest.raises(UnsampleError) as excinfo:
            load(path)
        assert_error(excinfo, ErrorCode.MODEL_INVALID, "notes.safetensors", "not a readable .safetensors file")


def test_a_safetensors_file_that_is_not_a_model_is_refused(tmp_path):
    path = save({"embedding": torch.zeros(3, 8)}, tmp_path / "embedding.safetensors")

    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(path)
    assert_error(excinfo, ErrorCode.MODEL_INVALID, "embedding.safetensors", "not a Stable Diffusion checkpoint")


def test_a_missing_file_is_not_found(tmp_path):
    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_checkpoint(tmp_path / "gone.safetensors")
    assert_error(excinfo, ErrorCode.MODEL_NOT_FOUND, "gone.safetensors")
    assert not single_file.is_single_file(tmp_path / "gone.safetensors")


# --- motion modules -------------------------------------------------------------------------------


def motion_module_file(originals, family: str, path: Path) -> Path:
    return save(animatediff(originals[family]["adapter"].state_dict()), path)


@pytest.mark.parametrize(
    ("family", "suffix", "version"),
    [
        ("sd15", ".ckpt", "v2"),
        ("sd15", ".safetensors", "v2"),
        ("sdxl", ".safetensors", "sdxl"),
        ("sdxl", ".ckpt", "sdxl"),
    ],
)
def test_an_animatediff_motion_module_loads(family, suffix, version, tiny, originals, tmp_path):
    path = motion_module_file(originals, family, tmp_path / f"mm_{family}{suffix}")
    assert single_file.is_single_file(path)

    loaded = single_file.load_motion_module(path, tiny[family].motion_adapter)

    assert (loaded.family, loaded.version) == (family, version)
    assert_same_weights(originals[family]["adapter"], loaded.model)


@pytest.mark.parametrize(
    ("version", "mid_block", "frames"),
    [("v1", False, 24), ("v2", True, 32), ("v3", False, 32)],  # AnimateDiff's releases for SD 1.5
)
def test_each_sd15_animatediff_release_loads_with_its_own_config(version, mid_block, frames, originals, tmp_path):
    adapter = animatediff_release(version, originals["sd15"]["unet"].config.block_out_channels)
    path = save(animatediff(adapter.state_dict()), tmp_path / f"mm_sd_{version}.ckpt")

    loaded = single_file.load_motion_module(path)

    assert (loaded.family, loaded.version) == ("sd15", version)
    assert loaded.model.config.use_motion_mid_block is mid_block
    assert loaded.model.config.motion_max_seq_length == frames
    assert_same_weights(adapter, loaded.model)  # the position tables too: they must be `frames` long


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_motion_modules_config_is_read_off_its_weights(family, originals, tmp_path):
    original = originals[family]["adapter"]
    path = motion_module_file(originals, family, tmp_path / "mm.safetensors")

    loaded = single_file.load_motion_module(path)

    assert_same_weights(original, loaded.model)
    assert loaded.config == "read off the weights"
    # Everything but the head count and norm groups, which are AnimateDiff's constants, not the tiny model's.
    for name in ("block_out_channels", "motion_layers_per_block", "motion_max_seq_length", "use_motion_mid_block"):
        assert list(_listed(loaded.model.config[name])) == list(_listed(original.config[name])), name
    assert loaded.model.config.motion_num_attention_heads == motion_layout.MOTION_HEADS


def _listed(value):
    return value if isinstance(value, list | tuple) else [value]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_motion_module_fits_the_checkpoints_unet(family, tiny, originals, checkpoint_files, tmp_path):
    from diffusers import UNetMotionModel

    checkpoint = single_file.load_checkpoint(checkpoint_files[family], tiny[family].checkpoint)
    motion = single_file.load_motion_module(motion_module_file(originals, family, tmp_path / "mm.safetensors"))

    unet = UNetMotionModel.from_unet2d(checkpoint.unet, motion.model)

    assert unet.config.block_out_channels == checkpoint.unet.config.block_out_channels


def test_a_checkpoint_is_not_taken_for_a_motion_module(checkpoint_files):
    with pytest.raises(UnsampleError) as excinfo:
        single_file.load_motion_module(checkpoint_files["sd15"])
    assert_error(
        excinfo, ErrorCode.MODEL_INVALID, "not an AnimateDiff motion module", "whole Stable Diffusion checkpoint"
    )


# --- ControlNets and VAEs -------------------------------------------------------------------------


def test_a_controlnet_in_the_original_layout_loads(tiny, originals, tmp_path):
    controlnet = originals["sd15"]["controlnet"]
    state = prefixed("control_model.", ldm_controlnet(controlnet.state_dict(), controlnet.config))
    path = save(state, tmp_path / "control_sd15_canny.pth")

    loaded = single_file.load_controlnet(path, tiny["sd15"].controlnet)

    assert loaded.family == "sd15"
    assert_same_weights(controlnet, loaded.model)


def test_an_sdxl_controlnet_in_one_diffusers_layout_file_loads(tiny, originals, tmp_path):
    controlnet = originals["sdxl"]["controlnet"]
    path = save(dict(controlnet.state_dict()), tmp_path / "controlnet_sdxl.safetensors")

    loaded = single_file.load_controlnet(path, tiny["sdxl"].controlnet)

    assert loaded.family == "sdxl"
    assert_same_weights(controlnet, loaded.model)


@pytest.mark.parametrize(("family", "scaling"), [("sd15", 0.18215), ("sdxl", 0.13025)])
def test_a_vae_file_loads_with_its_familys_scaling(family, scaling, tiny, originals, tmp_path):
    vae = originals[family]["vae"]
    path = save(ldm_vae(vae.state_dict(), vae.config), tmp_path / "vae-ft-mse.safetensors")

    loaded = single_file.load_vae(path, family, tiny[family].checkpoint)

    assert_same_weights(vae, loaded.model)
    assert loaded.model.config.scaling_factor == pytest.approx(scaling)
