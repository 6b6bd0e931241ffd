import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers import AysSchedules

from blender_unsample.engine.method import schedules
from blender_unsample.engine.models import families

# How SD 1.5 and SDXL were trained: 1000 timesteps of scaled-linear betas from 0.00085 to 0.012.
TRAINING = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
AYS_NAMES = {"sd15": "StableDiffusion", "sdxl": "StableDiffusionXL"}
# diffusers keeps alphabar in float32, so sigma = sqrt((1 - alphabar) / alphabar) carries a relative
# error of about eps32 / (2 (1 - alphabar)): 3.5e-5 at timestep 0, where 1 - alphabar is 0.00085, less
# elsewhere. One training timestep moves sigma by at least 0.3 % along the AYS lists, so this
# tolerance still pins every value to its integer timestep, with a margin of about 60.
RTOL = 5e-5


def diffusers_ays(family: str, *, with_timestep_zero: bool = False) -> torch.Tensor:
    """diffusers' Align Your Steps schedule as its own scheduler makes it: the sigmas of the published
    integer timesteps, then 0. NVIDIA's 10-step list runs down to timestep 0, which diffusers leaves out
    (its scheduler appends sigma 0 instead); ``with_timestep_zero`` puts it back."""
    timesteps = AysSchedules[f"{AYS_NAMES[family]}Timesteps"] + ([0] if with_timestep_zero else [])
    scheduler = EulerDiscreteScheduler(**TRAINING)
    scheduler.set_timesteps(timesteps=timesteps)
    assert scheduler.sigmas[-1] == 0
    return scheduler.sigmas.to(torch.float64)


def loglinear_reference(levels: list[float], steps: int) -> list[float]:
    """``steps`` + 1 sigmas spread evenly over [0, 1] on which ``levels`` sit evenly too, log(sigma)
    linear between neighbouring levels; the last sigma set to 0."""
    segments = len(levels) - 1
    sigmas = []
    for i in range(steps + 1):
        where = i / steps * segments
        left = min(int(where), segments - 1)
        share = where - left
        sigmas.append(math.exp((1 - share) * math.log(levels[left]) + share * math.log(levels[left + 1])))
    sigmas[-1] = 0.0
    return sigmas


def sd15_training_sigmas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_ays_at_ten_steps_equals_diffusers_schedule(family):
    sigmas = schedules.ays(10, families.family(family).ays_sigmas)
    expected = diffusers_ays(family)
    assert len(sigmas) == len(expected) == 11
    torch.testing.assert_close(sigmas[:-1], expected[:-1], rtol=RTOL, atol=0)
    assert sigmas[-1] == 0


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_ays_at_ten_steps_is_within_rounding_of_the_published_sigmas(family):
    # AysSchedules' sigma lists are NVIDIA's optimised values to 3 decimals; its timesteps are the same
    # values rounded to whole training timesteps, which is what samplers (ours too) use. So each of our
    # sigmas may differ from the published one by the 3-decimal rounding plus the change of sigma over
    # half a training timestep around its timestep.
    published = torch.tensor(AysSchedules[f"{AYS_NAMES[family]}Sigmas"], dtype=torch.float64)
    scheduler = EulerDiscreteScheduler(**TRAINING)
    training = ((1 - scheduler.alphas_cumprod.double()) / scheduler.alphas_cumprod.double()).sqrt()
    allowed = []
    for t in AysSchedules[f"{AYS_NAMES[family]}Timesteps"]:
        neighbours = [training[n] for n in (t - 1, t + 1) if 0 <= n < len(training)]
        allowed.append(5e-4 + max(abs(float(n - training[t])) for n in neighbours) / 2)
    ours = schedules.ays(10, families.family(family).ays_sigmas)
    assert ours[-1] == published[-1] == 0
    for value, target, slack in zip(ours[:-1].tolist(), published[:-1].tolist(), allowed, strict=True):
        assert abs(value - target) <= slack, (value, target, slack)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("steps", [1, 2, 4, 7, 16, 25, 40, 100])
def test_ays_at_other_step_counts_interpolates_the_ten_step_levels_log_linearly(family, steps):
    levels = diffusers_ays(family, with_timestep_zero=True)[:-1].tolist()  # 11 levels, timestep 999 to 0
    expected = torch.tensor(loglinear_reference(levels, steps), dtype=torch.float64)
    sigmas = schedules.ays(steps, families.family(family).ays_sigmas)
    assert len(sigmas) == steps + 1
    torch.testing.assert_close(sigmas[:-1], expected[:-1], rtol=RTOL, atol=0)
    assert sigmas[-1] == 0


def test_sdxl_and_sd15_ays_lists_differ():
    sd15, sdxl = (families.family(name).ays_sigmas for name in ("sd15", "sdxl"))
    assert not torch.allclose(schedules.ays(16, sd15), schedules.ays(16, sdxl))


@pytest.mark.parametrize("published", [(), (14.6,), (14.6, 1.0, 3.0, 0.03)])
def test_ays_needs_a_falling_published_list(published):
    # e.g. get_sigmas("ays", ...) called without the family's list: a clear refusal, not a wrong schedule.
    with pytest.raises(ValueError, match="must fall"):
        schedules.ays(10, published)
    with pytest.raises(ValueError, match="must fall"):
        schedules.get_sigmas("ays", 10, training_sigmas=sd15_training_sigmas(), ays_sigmas=published)


@pytest.mark.parametrize("scheduler", schedules.SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 4, 16, 33])
def test_every_schedule_decreases_from_sigma_max_to_zero(scheduler, steps):
    training = sd15_training_sigmas()
    sigmas = schedules.get_sigmas(
        scheduler, steps, training_sigmas=training, ays_sigmas=families.family("sd15").ays_sigmas
    )
    assert len(sigmas) == steps + 1
    assert sigmas[-1] == 0
    assert sigmas[0] == pytest.approx(float(training.max()), rel=1e-4)
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_karras_endpoints_and_rho_spacing():
    sigmas = schedules.karras(10, 0.03, 14.6)
    assert sigmas[0] == pytest.approx(14.6)
    assert sigmas[-2] == pytest.approx(0.03)
    assert sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    # Evenly spaced in sigma ** (1 / 7).
    root = sigmas[:-1] ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff()[:1].expand(9))


def test_exponential_has_a_constant_ratio():
    sigmas = schedules.exponential(8, 0.03, 14.6)
    ratios = sigmas[1:-1] / sigmas[:-2]
    torch.testing.assert_close(ratios, ratios[:1].expand(len(ratios)))
    assert sigmas[-2] == pytest.approx(0.03)


def test_normal_uses_evenly_spaced_training_timesteps():
    training = sd15_training_sigmas()
    sigmas = schedules.normal(4, training)
    # Timesteps 999, 666, 333, 0 fall exactly on training sigmas.
    torch.testing.assert_close(sigmas[:-1], training[[999, 666, 333, 0]])
    assert sigmas[-1] == 0


def test_sigma_at_fractional_timestep_interpolates_log_sigma():
    training = sd15_training_sigmas()
    midpoint = schedules.sigma_at_timestep(training, torch.tensor([10.5], dtype=torch.float64))
    assert float(midpoint) == pytest.approx(float((training[10] * training[11]).sqrt()))


def test_flip_reverses_and_replaces_the_leading_zero():
    forward = schedules.ays(4, families.family("sd15").ays_sigmas)
    flipped = schedules.flip(forward)
    assert flipped[0] == schedules.FLIP_START_SIGMA == 1e-4
    torch.testing.assert_close(flipped[1:], forward.flip(0)[1:])
    assert bool((flipped[1:] > flipped[:-1]).all())
    assert forward[-1] == 0, "flip must not modify its input"


def test_flip_keeps_a_nonzero_first_sigma():
    assert schedules.flip([3.0, 1.0, 0.5]).tolist() == [0.5, 1.0, 3.0]


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="steps"):
        schedules.ays(steps, families.family("sd15").ays_sigmas)


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="karras"):
        schedules.get_sigmas("beta", 10, training_sigmas=sd15_training_sigmas())
