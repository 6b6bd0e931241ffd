"""The restyle job end to end on tiny random-weight models."""

import numpy as np
import pytest
from conftest import write_clip
from PIL import Image

from blender_unsample.engine.errors import UnsampleError
from blender_unsample.engine.job.pipeline import restyle
from blender_unsample.engine.protocol import Done, ErrorCode, FrameWritten, Progress, WarningEvent


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def run(spec):
    events = []
    restyle(spec, events.append)
    return events


@pytest.fixture(scope="module")
def clip40(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip40")
    write_clip(folder, 40)
    return folder


def test_forty_frames_in_windows_of_sixteen_become_forty_styled_frames(clip40, tiny_spec, tmp_path):
    spec = tiny_spec(clip40, context=16, overlap=4, out=str(tmp_path / "styled"))
    events = run(spec)
    inputs = sorted(p.name for p in clip40.iterdir())
    outputs = sorted(p.name for p in (tmp_path / "styled").glob("*.png"))
    assert outputs == inputs
    for name in inputs:
        source, styled = pixels(clip40 / name), pixels(tmp_path / "styled" / name)
        assert styled.shape == source.shape
        assert np.abs(styled - source).mean() > 5, f"{name} came back unchanged"
    written = [e for e in events if isinstance(e, FrameWritten)]
    assert [e.index for e in written] == list(range(40))
    assert [e.name for e in written] == inputs
    assert isinstance(events[-1], Done) and events[-1].frames == 40
    windows = {e.windows for e in events if isinstance(e, Progress) and e.stage == "resample"}
    assert windows == {3}


def test_the_same_job_gives_the_same_bits(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 6)
    run(tiny_spec(clip, out=str(tmp_path / "a")))
    run(tiny_spec(clip, out=str(tmp_path / "b")))
    for path in sorted((tmp_path / "a").glob("*.png")):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


def test_style_prompt_and_controlnet_kind_each_change_the_result(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 6)
    results = {}
    for name, changes in {
        "none": {"control": "none"},
        "canny": {"control": "canny", "controlnet_strength": 1.0},
        "tile": {"control": "tile", "controlnet_strength": 1.0},
        "other prompt": {"control": "none", "prompt": "a charcoal sketch"},
    }.items():
        out = tmp_path / name
        run(tiny_spec(clip, out=str(out), **changes))
        results[name] = np.stack([pixels(p) for p in sorted(out.glob("*.png"))])
    names = list(results)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            difference = np.abs(results[first] - results[second]).mean()
            assert difference > 0.5, f"{first} and {second} gave the same frames"


def test_a_looped_clip_blends_its_last_frames_into_its_first(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 12)
    run(tiny_spec(clip, out=str(tmp_path / "straight"), context=6, overlap=2))
    events = run(tiny_spec(clip, out=str(tmp_path / "looped"), context=6, overlap=2, looped=True))
    first = "frame_0001.png"
    assert np.abs(pixels(tmp_path / "straight" / first) - pixels(tmp_path / "looped" / first)).mean() > 0.5
    windows = {e.windows for e in events if isinstance(e, Progress) and e.stage == "unsample"}
    assert windows == {3}  # starts 0, 4, 8: the last window wraps to frames 0 and 1


def test_frame_by_frame_without_a_motion_module(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 5)
    events = run(tiny_spec(clip, motion_adapter="none", control="none"))
    assert isinstance(events[-1], Done) and events[-1].frames == 5


def test_odd_sized_frames_are_processed_at_a_multiple_of_eight_and_written_back_at_their_size(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 3, size=(70, 50))
    events = run(tiny_spec(clip))
    warnings = [e.message for e in events if isinstance(e, WarningEvent)]
    assert any("64x48" in message for message in warnings), warnings
    assert all(Image.open(p).size == (70, 50) for p in (tmp_path / "out").glob("*.png"))


def test_cancel_stops_between_frames_and_leaves_only_whole_frames(tiny_spec, tmp_path):
    import threading

    clip = tmp_path / "clip"
    write_clip(clip, 10)
    cancel = threading.Event()
    events = []

    def emit(event):
        events.append(event)
        if isinstance(event, FrameWritten) and event.index == 3:
            cancel.set()

    with pytest.raises(UnsampleError) as error:
        restyle(tiny_spec(clip, vae_batch=2), emit, cancel)
    assert error.value.code is ErrorCode.CANCELLED
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".unsample-job")
    assert written == [f"frame_{i:04d}.png" for i in range(1, 5)]  # the batch in flight finished
    for name in written:
        Image.open(tmp_path / "out" / name).load()  # whole, readable files
    assert not any(isinstance(e, Done) for e in events)


@pytest.mark.parametrize(
    ("setup", "code", "fragment"),
    [
        (lambda clip, spec: spec(clip / "missing"), ErrorCode.BAD_FRAMES, "does not exist"),
        (lambda clip, spec: spec(clip, out=str(clip)), ErrorCode.BAD_SETTINGS, "source frames would be overwritten"),
        (lambda clip, spec: spec(clip, overlap=8), ErrorCode.BAD_SETTINGS, "overlap (8) must be smaller"),
        (lambda clip, spec: spec(clip, model=str(clip / "nope")), ErrorCode.MODEL_NOT_FOUND, "does not exist"),
        (
            lambda clip, spec: spec(clip, model="someone/not-cached-model"),
            ErrorCode.MODEL_NOT_FOUND,
            "--allow-download",
        ),
        (lambda clip, spec: spec(clip, model=str(clip)), ErrorCode.MODEL_INVALID, "cannot load the checkpoint"),
    ],
)
def test_bad_input_gets_its_own_code_and_message(tiny_spec, tmp_path, setup, code, fragment):
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    with pytest.raises(UnsampleError) as error:
        restyle(setup(clip, tiny_spec), lambda event: None)
    assert error.value.code is code
    assert fragment in error.value.message


def test_frames_of_differing_sizes_are_refused(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    write_clip(clip, 1, size=(80, 48), start=3)
    with pytest.raises(UnsampleError, match="frames differ in size: 64x48"):
        restyle(tiny_spec(clip), lambda event: None)


def test_controlnet_hints_do_not_outlive_the_job(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 3)
    work = tmp_path / "work"
    run(tiny_spec(clip, work_dir=str(work), control="tile"))
    assert work.is_dir() and not list(work.rglob("*.npy")), "a frame-sized hint per frame must not stay on disk"


def test_refinement_with_dpmpp_2m_is_skipped_with_a_warning(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    events = run(tiny_spec(clip, sampler="dpmpp_2m", inversion_refinement=2, control="none"))
    assert any("inversion refinement works with the euler sampler" in e.message for e in events if e.type == "warning")
    unsample_calls = [e for e in events if isinstance(e, Progress) and e.stage == "unsample"]
    assert len(unsample_calls) == 3  # one call per step: no refinement calls


def tiny_unet_lora(tiny_models, path, family_prefix="lora_unet_"):
    """A kohya-layout LoRA on two attention projections of the tiny SD 1.5 UNet."""
    from diffusers import UNet2DConditionModel
    from lora_format import random_updates, write_kohya

    unet = UNet2DConditionModel.from_pretrained(tiny_models.checkpoint, subfolder="unet")
    names = ["down_blocks.0.attentions.0.proj_in", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    targets = {family_prefix + name.replace(".", "_"): unet.get_submodule(name) for name in names}
    return write_kohya(path, random_updates(targets))


def test_loras_from_the_job_are_merged_and_change_the_result(tiny_spec, tiny_models, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 3)
    lora = tiny_unet_lora(tiny_models, tmp_path / "style.safetensors")
    run(tiny_spec(clip, out=str(tmp_path / "plain"), control="none"))
    run(tiny_spec(clip, out=str(tmp_path / "lora"), control="none", loras=[f"{lora}=0.8"]))
    run(tiny_spec(clip, out=str(tmp_path / "zero"), control="none", loras=[f"{lora}=0"]))
    first = "frame_0001.png"
    assert np.abs(pixels(tmp_path / "plain" / first) - pixels(tmp_path / "lora" / first)).mean() > 0.5
    assert np.array_equal(pixels(tmp_path / "plain" / first), pixels(tmp_path / "zero" / first))


def test_a_broken_lora_is_named_before_sampling(tiny_spec, tmp_path):
    clip = tmp_path / "clip"
    write_clip(clip, 2)
    broken = tmp_path / "broken.safetensors"
    broken.write_text("not a model")
    events = []
    with pytest.raises(UnsampleError) as error:
        restyle(tiny_spec(clip, loras=[str(broken)]), events.append)
    assert error.value.code is ErrorCode.MODEL_INVALID and "broken.safetensors" in error.value.message
    assert not any(isinstance(e, Progress) and e.stage in ("unsample", "resample") for e in events)
