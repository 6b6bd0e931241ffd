import pytest
import torch

from blender_unsample.engine.tiny_models import TinyModels, build_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.inference_mode():
        yield


@pytest.fixture(autouse=True)
def _own_user_cache(tmp_path, monkeypatch):
    """The command line keeps unsampled latents in the user's cache folder by default: each test gets
    its own, so no test reads another's entries and nothing lands in the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))


def write_clip(folder, frames: int, size=(64, 48), start: int = 1) -> list:
    """A clip with real motion: a disc moving right over a slowly panning striped background."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for i in range(frames):
        columns = (np.arange(width) + 2 * i) // 6 % 2
        background = np.repeat((40 + 60 * columns)[None, :, None], height, 0).repeat(3, 2).astype(np.uint8)
        image = Image.fromarray(background)
        x = (4 + 3 * i) % width
        ImageDraw.Draw(image).ellipse((x, height // 4, x + width // 4, height // 4 + width // 4), fill=(230, 190, 40))
        path = folder / f"frame_{start + i:04d}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def tiny_spec(tiny_models, tmp_path):
    """A JobSpec factory over the tiny models, small and fast: override what a test varies."""
    from blender_unsample.engine.protocol import JobSpec

    def make(frames_dir, **changes) -> JobSpec:
        settings = dict(
            frames=str(frames_dir),
            out=str(tmp_path / "out"),
            prompt="an oil painting",
            model=str(tiny_models.checkpoint),
            motion_adapter=str(tiny_models.motion_adapter),
            controlnet=str(tiny_models.controlnet),
            steps=3,
            context=8,
            overlap=2,
            device="cpu",
        )
        settings.update(changes)
        return JobSpec(**settings)

    return make


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("tiny_sdxl"), "sdxl")
