import pytest
import torch

from blender_unsample.engine import schedules

# The published Align Your Steps lists at 10 steps (DESIGN.md), written out here so that a wrong
# table in the module fails.
AYS_PUBLISHED = {
    "sd15": [
        14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
        0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582,
    ],
    "sdxl": [
        14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
        0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582,
    ],
}  # fmt: skip
# DESIGN.md: SD1.5 AYS resampled to 16 steps (log-sigma interpolated, last sigma set to 0).
AYS_SD15_16 = [
    14.6146, 8.7862, 5.6906, 4.1212, 3.2266, 2.5768, 2.0605, 1.683, 1.3944,
    1.1073, 0.8745, 0.685, 0.5094, 0.3525, 0.1929, 0.0817, 0.0,
]  # fmt: skip


def sd15_training_sigmas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_ays_at_ten_steps_is_the_published_list_ending_in_zero(family):
    sigmas = schedules.ays(10, family)
    published = torch.tensor(AYS_PUBLISHED[family], dtype=torch.float64)
    assert len(sigmas) == 11
    torch.testing.assert_close(sigmas[:-1], published[:-1], rtol=0, atol=1e-9)
    assert sigmas[-1] == 0


def test_ays_sd15_at_sixteen_steps_matches_the_design_values():
    torch.testing.assert_close(
        schedules.ays(16, "sd15"), torch.tensor(AYS_SD15_16, dtype=torch.float64), rtol=0, atol=1e-3
    )


def test_sdxl_and_sd15_ays_lists_differ():
    assert not torch.allclose(schedules.ays(16, "sd15"), schedules.ays(16, "sdxl"))


@pytest.mark.parametrize("scheduler", schedules.SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 4, 16, 33])
def test_every_schedule_decreases_from_sigma_max_to_zero(scheduler, steps):
    training = sd15_training_sigmas()
    sigmas = schedules.get_sigmas(scheduler, steps, training_sigmas=training)
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
    forward = schedules.ays(4)
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
        schedules.ays(steps)


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="sdxl"):
        schedules.ays(10, "sd3")
    with pytest.raises(ValueError, match="karras"):
        schedules.get_sigmas("beta", 10, training_sigmas=sd15_training_sigmas())
