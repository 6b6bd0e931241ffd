"""The GPU check (tests/benchmarks/gpu_check.py) in its dry run: the same code on the CPU, tiny models.

No GPU runs here: this proves that every case runs and is recorded, so the day a GPU is lent the
check can be trusted to finish.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "benchmarks" / "gpu_check.py"
MEMORY_OPTIONS = {"chunk_feed_forward", "vae_batch", "cpu_offload", "vae_tiling"}
STEPS = 2
UNET_CALLS = STEPS * 2 + STEPS  # unsample with one refinement call per step, then resample; one window


def _run(out: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=SCRIPT.parents[2])


def _no_constants(name: str) -> float:
    raise AssertionError(f"{name} in the results")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    done = _run(out, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "gpu_results.json").read_text(), parse_constant=_no_constants)  # NaN, Infinity
    return results, (out / "gpu_check.md").read_text()


def test_dry_run_measures_every_job(dry_run):
    results, _ = dry_run
    assert results["dry_run"] is True and results["device"] == "cpu"
    jobs = {job["case"]: job for job in results["jobs"]}
    assert [j["family"] for j in results["jobs"]].count("sd15") == 1 + len(MEMORY_OPTIONS) + 1  # + all four
    assert {name for job in jobs.values() for name in job["options"]} == MEMORY_OPTIONS
    alone = sorted(json.dumps(j["options"]) for j in results["jobs"] if len(j["options"]) == 1)
    each = ['{"chunk_feed_forward": true}', '{"cpu_offload": true}', '{"vae_batch": 1}', '{"vae_tiling": true}']
    assert alone == each
    sdxl = [job for job in results["jobs"] if job["family"] == "sdxl"]
    assert sorted(job["frames"] for job in sdxl) == [4, 8]  # stand-ins for 8 and 16 at 1024 px
    for job in results["jobs"]:
        assert job["finite"] and not job["not_finite"], job
        assert job["checked"]["styled latents"] == 1 and job["checked"]["vae decode"] >= 1
        assert job["unet_calls"] == job["checked"]["unet output"] == UNET_CALLS
        assert job["frames_written"] == job["reported_frames"] == job["frames"]
        assert job["peak_vram_gib"] == "n/a (CPU)"
        assert 0 < job["seconds"] < 60


def test_dry_run_compares_with_diffusers(dry_run):
    speed = dry_run[0]["speed"]
    for side in ("ours", "theirs"):
        assert speed[side]["calls"] == [speed["steps"]]
        assert 0 < speed[side]["inside_ms_per_call"] <= speed[side]["ms_per_call"]
    assert math.isclose(speed["ratio"], speed["ours"]["ms_per_call"] / speed["theirs"]["ms_per_call"], rel_tol=1e-3)
    assert speed["finite"] and speed["agreement"] < 1e-3  # the same noise in, the same latents out


def test_dry_run_cancels_at_once(dry_run):
    cancel = dry_run[0]["cancel"]
    assert cancel["cancel_set"] and cancel["stopped"] and cancel["error"] == "cancelled"
    assert cancel["unet_calls_before_cancel"] == STEPS * 2 + 1  # the unsample pass and one resample step
    assert cancel["unet_calls_after_cancel"] == 0 and cancel["frames_written"] == 0
    assert 0 <= cancel["seconds_to_stop"] < 1


def test_dry_run_report_says_no_gpu_ran(dry_run):
    results, report = dry_run
    assert "DRY RUN" in report and "no GPU ran this" in report
    assert results["machine"]["gpu"].startswith("none")
    for job in results["jobs"]:
        assert f"| {job['case']} |" in report


def test_dry_run_never_replaces_real_results(tmp_path):
    real = {"dry_run": False, "device": "cuda", "jobs": ["kept"]}
    (tmp_path / "gpu_results.json").write_text(json.dumps(real))
    done = _run(tmp_path, timeout=120)
    assert done.returncode != 0 and "real GPU run" in done.stderr
    assert json.loads((tmp_path / "gpu_results.json").read_text()) == real
    assert not (tmp_path / "gpu_check.md").exists()
