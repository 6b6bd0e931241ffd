"""Shared set-up for the benchmarks that run restyle jobs on the tiny models."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "engine")]

from conftest import write_clip  # noqa: E402  (the tests' clip writer: a moving disc, a panning background)

from blender_unsample.engine.job import pipeline  # noqa: E402
from blender_unsample.engine.protocol import JobSpec  # noqa: E402
from blender_unsample.engine.tiny_models import TinyModels, build_tiny_models  # noqa: E402

__all__ = ["JobSpec", "TinyModels", "build_tiny_models", "job_spec", "timed_model_calls", "write_clip"]


def job_spec(models: TinyModels, clip: Path, out: Path, **changes: Any) -> JobSpec:
    settings = dict(
        frames=str(clip), out=str(out), prompt="an oil painting", model=str(models.checkpoint),
        motion_adapter=str(models.motion_adapter), controlnet=str(models.controlnet), steps=4, device="cpu",
    )  # fmt: skip
    return JobSpec(**{**settings, **changes})


@contextmanager
def timed_model_calls() -> Iterator[dict[str, float]]:
    """Seconds spent inside each model's forward during the jobs run in this block, by model,
    plus "load" for loading the models: the pipeline's own loader is wrapped to add the hooks."""
    spent: dict[str, float] = defaultdict(float)
    original = pipeline.load_components

    def load_and_hook(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        components = original(*args, **kwargs)
        spent["load"] += time.perf_counter() - started
        models = {"unet": components.unet, "controlnet": components.controlnet}
        models |= {"vae encoder": components.vae.encoder, "vae decoder": components.vae.decoder}
        models |= {f"text encoder {i + 1}": e for i, e in enumerate(components.text_encoders)}
        for name, model in models.items():
            if model is not None:
                _hook(model, name, spent)
        return components

    pipeline.load_components = load_and_hook
    try:
        yield spent
    finally:
        pipeline.load_components = original


def _hook(model: Any, name: str, spent: dict[str, float]) -> None:
    started: list[float] = []
    model.register_forward_pre_hook(lambda module, args: started.append(time.perf_counter()))

    def stop(module: Any, args: Any, output: Any) -> None:
        spent[name] += time.perf_counter() - started.pop()

    model.register_forward_hook(stop)
