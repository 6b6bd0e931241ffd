"""Unsampling and resampling against a denoiser with an exact answer (a Gaussian mixture)."""

import math

import pytest
import torch
from gaussian_mixture import GaussianMixture

from blender_unsample.engine.method import schedules
from blender_unsample.engine.method.samplers import UnsupportedSamplerError, get_sampler
from blender_unsample.engine.method.unsampling import resample, unsample
from blender_unsample.engine.models.families.sd15 import SD15

SAMPLERS = ["euler", "dpmpp_2m"]


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return GaussianMixture.standard(dims=4)


@pytest.fixture(scope="module")
def data(mixture) -> torch.Tensor:
    return mixture.sample(2000, seed=1)


def round_trip_error(model, x0, sampler: str, steps: int) -> float:
    sigmas = schedules.ays(steps, SD15.ays_sigmas)
    noise = unsample(model, x0, sigmas, sampler=sampler)
    back = resample(model, noise, sigmas, sampler=sampler)
    return float((back - x0).pow(2).mean().sqrt())


@pytest.mark.parametrize(("sampler", "steps", "bound"), [("euler", 64, 0.05), ("dpmpp_2m", 32, 0.02)])
def test_unsample_then_resample_returns_the_input(mixture, data, sampler, steps, bound):
    # The data's own spread is about 1.2: these bounds are a few percent of it.
    assert round_trip_error(mixture, data, sampler, steps) < bound


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_round_trip_error_shrinks_as_steps_grow(mixture, data, sampler):
    errors = [round_trip_error(mixture, data, sampler, steps) for steps in (8, 16, 32)]
    assert errors[0] > 1.5 * errors[1] > 1.5 * 1.5 * errors[2], errors


@pytest.mark.parametrize("steps", [8, 16, 32])
def test_dpmpp_2m_beats_euler_at_equal_steps(mixture, data, steps):
    assert round_trip_error(mixture, data, "dpmpp_2m", steps) < 0.7 * round_trip_error(mixture, data, "euler", steps)


def exact_spread(mixture: GaussianMixture, sigma: float) -> float:
    # The probability-flow ODE carries the data distribution to data + N(0, sigma^2).
    return math.sqrt(float(mixture.variance) + sigma**2)


def test_unsampled_noise_reaches_the_exact_spread_at_sigma_max(mixture):
    data = mixture.sample(20000, seed=2)  # many samples: the spread's own sampling error is ~0.3 %
    sigma_max = float(schedules.ays(16, SD15.ays_sigmas)[0])
    exact = exact_spread(mixture, sigma_max)
    spreads = {
        (sampler, steps): float(unsample(mixture, data, schedules.ays(steps, SD15.ays_sigmas), sampler=sampler).std())
        / exact
        for sampler in SAMPLERS
        for steps in (16, 64)
    }
    # Euler's first-order steps fall short on the last, large steps (about 13 % at 16 AYS steps,
    # 4 % at 64); DPM++ 2M gets within about 1 % at 64. A wrong direction, a missing flip or
    # added noise would miss by far more.
    assert 0.8 < spreads[("euler", 16)] < 0.95
    assert spreads[("euler", 16)] < spreads[("euler", 64)] < 1.0
    assert spreads[("euler", 16)] < spreads[("dpmpp_2m", 16)] < spreads[("dpmpp_2m", 64)]
    assert spreads[("dpmpp_2m", 64)] == pytest.approx(1.0, abs=0.025)


def test_unsampled_noise_keeps_each_sample_distinguishable(mixture, data):
    # The noise is a function of the input: the source is recoverable, not replaced.
    noise = unsample(mixture, data[:64], schedules.ays(16, SD15.ays_sigmas), sampler="dpmpp_2m")
    distances = torch.cdist(noise, noise) + torch.eye(64) * 1e9
    assert float(distances.min()) > 1e-3


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde", "DPM_2_Ancestral"])
def test_noise_injecting_samplers_are_refused_with_the_reason(mixture, data, name):
    with pytest.raises(UnsupportedSamplerError, match="noise") as error:
        unsample(mixture, data, schedules.ays(4, SD15.ays_sigmas), sampler=name)
    assert "euler" in str(error.value) and "dpmpp_2m" in str(error.value)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(UnsupportedSamplerError, match="euler, dpmpp_2m"):
        get_sampler("heun3000")


def test_passes_refuse_a_schedule_in_the_wrong_direction(mixture, data):
    with pytest.raises(ValueError, match="decreasing"):
        unsample(mixture, data, schedules.flip(schedules.ays(4, SD15.ays_sigmas)))
    with pytest.raises(ValueError, match="decreasing"):
        resample(mixture, data, schedules.flip(schedules.ays(4, SD15.ays_sigmas)))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_callback_sees_every_step_and_can_stop_the_pass(mixture, data, sampler):
    seen = []
    unsample(mixture, data[:8], schedules.ays(6, SD15.ays_sigmas), sampler=sampler, callback=seen.append)
    assert [(s.index, s.total) for s in seen] == [(i, 6) for i in range(6)]
    assert [s.sigma for s in seen] == schedules.flip(schedules.ays(6, SD15.ays_sigmas))[:-1].tolist()

    class Stop(Exception):
        pass

    def stop_at_third(step):
        if step.index == 2:
            raise Stop

    calls_before = mixture.calls
    with pytest.raises(Stop):
        resample(mixture, data[:8], schedules.ays(6, SD15.ays_sigmas), sampler=sampler, callback=stop_at_third)
    assert mixture.calls - calls_before == 3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_model_call_per_step(mixture, data, sampler):
    before = mixture.calls
    unsample(mixture, data[:8], schedules.ays(12, SD15.ays_sigmas), sampler=sampler)
    assert mixture.calls - before == 12


def test_refinement_cuts_the_euler_round_trip_error_to_a_third_or_less(mixture, data):
    from blender_unsample.engine.method.unsampling import resample, unsample

    sigmas = schedules.ays(16, SD15.ays_sigmas)
    errors, calls = {}, {}
    for refine in (0, 1, 2, 3):
        before = mixture.calls
        noise = unsample(mixture, data, sigmas, refine=refine)
        calls[refine] = mixture.calls - before
        back = resample(mixture, noise, sigmas)
        errors[refine] = float((back - data).pow(2).mean().sqrt())
    assert errors[1] <= errors[0] / 3, errors
    assert errors[3] < errors[1], errors
    assert calls == {0: 16, 1: 32, 2: 48, 3: 64}  # one more model call per step and iteration


def test_dpmpp_2m_ignores_refinement(mixture, data):
    plain = unsample(mixture, data, schedules.ays(8, SD15.ays_sigmas), sampler="dpmpp_2m")
    refined = unsample(mixture, data, schedules.ays(8, SD15.ays_sigmas), sampler="dpmpp_2m", refine=3)
    assert torch.equal(plain, refined)


def test_the_refinable_samplers_are_the_ones_with_a_refined_inverse():
    from blender_unsample.engine.method.samplers import REFINED_INVERSES, SAMPLERS
    from blender_unsample.engine.protocol import REFINABLE_SAMPLERS
    from blender_unsample.engine.protocol import SAMPLERS as SAMPLER_NAMES

    refinable = {name for name, step in SAMPLERS.items() if step in REFINED_INVERSES}
    assert refinable == set(REFINABLE_SAMPLERS) and set(SAMPLERS) == set(SAMPLER_NAMES)
