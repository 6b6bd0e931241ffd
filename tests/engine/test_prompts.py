"""Prompt conditioning against diffusers' own encode_prompt, on the tiny SDXL models: above all the
unconditional branch of an empty negative prompt, which SDXL pipelines zero when the model says so."""

import json
import shutil

import pytest
import torch
from conftest import write_clip
from formats import original_checkpoint
from safetensors.torch import save_file

from blender_unsample.engine.job import pipeline
from blender_unsample.engine.job.prompts import encode_prompt
from blender_unsample.engine.models.components import forces_zeros_for_empty_prompt, load_components
from blender_unsample.engine.protocol import JobSpec

CPU = torch.device("cpu")
SIZE = (96, 64)


@pytest.fixture(scope="module", params=[True, False], ids=["zeros", "encoded"])
def sdxl_checkpoint(request, tiny_sdxl, tmp_path_factory):
    """The tiny SDXL checkpoint folder with force_zeros_for_empty_prompt set as the parameter says."""
    folder = tmp_path_factory.mktemp("sdxl_checkpoint") / "checkpoint"
    shutil.copytree(tiny_sdxl.checkpoint, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["force_zeros_for_empty_prompt"] = request.param
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder, request.param


def spec_for(checkpoint, frames="in", **changes) -> JobSpec:
    settings = dict(
        frames=str(frames), out="out", prompt="a watercolor of a harbour", family="sdxl", model=str(checkpoint),
        motion_adapter="none", control="none", steps=2, context=4, overlap=1, device="cpu",
    )  # fmt: skip
    return JobSpec(**{**settings, **changes})


def diffusers_encode(pipe, prompt: str, negative: str) -> tuple[torch.Tensor, ...]:
    """(embeds, negative embeds, pooled, negative pooled) as the pipeline makes them; our empty negative
    prompt is diffusers' absent one (None): "" passed on would be encoded whatever the flag says."""
    return pipe.encode_prompt(prompt, device=CPU, do_classifier_free_guidance=True, negative_prompt=negative or None)


@pytest.fixture(scope="module")
def diffusers_pipelines(sdxl_checkpoint, tiny_sdxl):
    """diffusers' SDXL pipeline from the checkpoint folder, and AnimateDiff-SDXL's on the same parts."""
    from diffusers import AnimateDiffSDXLPipeline, MotionAdapter, StableDiffusionXLPipeline

    folder, _ = sdxl_checkpoint
    sdxl = StableDiffusionXLPipeline.from_pretrained(folder)
    animatediff = AnimateDiffSDXLPipeline.from_pretrained(
        folder, motion_adapter=MotionAdapter.from_pretrained(tiny_sdxl.motion_adapter)
    )
    return {"sdxl": sdxl, "animatediff-sdxl": animatediff}


@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
@pytest.mark.parametrize("reference", ["sdxl", "animatediff-sdxl"])
def test_sdxl_uncond_equals_diffusers(sdxl_checkpoint, diffusers_pipelines, reference, negative):
    folder, zeros = sdxl_checkpoint
    pipe = diffusers_pipelines[reference]
    assert pipe.config.force_zeros_for_empty_prompt is zeros  # read from the folder, as ours is
    components = load_components(spec_for(folder), torch.float32, torch.float32)
    assert components.zero_empty_negative is zeros

    def ours(text: str, **options):
        return encode_prompt(components.tokenizers, components.text_encoders, text, CPU, SIZE, **options)

    prompt = "a watercolor of a harbour"
    embeds, negative_embeds, pooled, negative_pooled = diffusers_encode(pipe, prompt, negative)
    cond, uncond = ours(prompt), ours(negative, zeros_if_empty=components.zero_empty_negative)
    assert torch.equal(cond.embeds, embeds) and torch.equal(cond.added["text_embeds"], pooled)
    assert torch.equal(uncond.embeds, negative_embeds)
    assert torch.equal(uncond.added["text_embeds"], negative_pooled)
    assert torch.equal(uncond.added["time_ids"], cond.added["time_ids"])  # the size conditioning stays
    # Zeros exactly where diffusers zeroes, and then not what encoding "" gives.
    zeroed = bool((uncond.embeds == 0).all() and (uncond.added["text_embeds"] == 0).all())
    assert zeroed is (negative == "" and zeros)
    if negative == "":
        assert torch.equal(uncond.embeds, ours("").embeds) is not zeros


def test_sd15_ignores_the_zeros_rule(tiny_models):
    # SD 1.5 pipelines always encode the negative prompt, "" included; the loader never asks for zeros.
    spec = JobSpec(frames="in", out="out", prompt="x", model=str(tiny_models.checkpoint), motion_adapter="none",
                   control="none", device="cpu")  # fmt: skip
    assert load_components(spec, torch.float32, torch.float32).zero_empty_negative is False


def test_the_flag_comes_from_model_index_else_diffusers_default(tiny_sdxl, tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    index = json.loads((tiny_sdxl.checkpoint / "model_index.json").read_text())
    for value in (False, True):
        (folder / "model_index.json").write_text(json.dumps(index | {"force_zeros_for_empty_prompt": value}))
        assert forces_zeros_for_empty_prompt(str(folder)) is value
    del index["force_zeros_for_empty_prompt"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert forces_zeros_for_empty_prompt(str(folder)) is True  # StableDiffusionXLPipeline's default
    (folder / "model_index.json").unlink()
    assert forces_zeros_for_empty_prompt(str(folder)) is True


def test_a_single_file_checkpoint_follows_its_config_folder(sdxl_checkpoint, tiny_sdxl, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder, zeros = sdxl_checkpoint
    source = tiny_sdxl.checkpoint
    models = {
        "unet": UNet2DConditionModel.from_pretrained(source / "unet"),
        "vae": AutoencoderKL.from_pretrained(source / "vae"),
        "text_encoder": CLIPTextModel.from_pretrained(source / "text_encoder"),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(source / "text_encoder_2"),
    }
    file = tmp_path / "tiny_sdxl.safetensors"
    save_file(original_checkpoint(models, "sdxl"), file)
    spec = spec_for(file, config=str(folder))
    assert load_components(spec, torch.float32, torch.float32).zero_empty_negative is zeros


class _Stop(Exception):
    pass


@pytest.mark.parametrize("unsample_prompt", [None, ""])
def test_both_passes_get_diffusers_uncond(sdxl_checkpoint, diffusers_pipelines, unsample_prompt, tmp_path, monkeypatch):
    # What restyle hands to the two sampling passes, caught before any sampling.
    folder, _ = sdxl_checkpoint
    clip = tmp_path / "clip"
    write_clip(clip, 2, size=SIZE)
    seen = {}

    def capture(run, *args):
        seen["guidance"] = run.guidance["unsample"], run.guidance["resample"]
        raise _Stop

    monkeypatch.setattr(pipeline.RestyleRun, "sample", capture)
    spec = spec_for(folder, clip, out=str(tmp_path / "out"), unsample_prompt=unsample_prompt, cfg=2.0, unsample_cfg=4.0)
    with pytest.raises(_Stop):
        pipeline.restyle(spec, lambda event: None)
    unsample, style = seen["guidance"]
    pipe = diffusers_pipelines["sdxl"]
    for guidance, prompt in ((unsample, spec.source_prompt), (style, spec.prompt)):
        embeds, negative_embeds, pooled, negative_pooled = diffusers_encode(pipe, prompt, spec.negative_prompt)
        assert torch.equal(guidance.cond.embeds, embeds) and torch.equal(guidance.cond.added["text_embeds"], pooled)
        assert torch.equal(guidance.uncond.embeds, negative_embeds)
        assert torch.equal(guidance.uncond.added["text_embeds"], negative_pooled)
        assert guidance.cond.added["time_ids"].tolist() == [[SIZE[1], SIZE[0], 0, 0, SIZE[1], SIZE[0]]]
