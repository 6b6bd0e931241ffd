"""The pure helpers of figure 10 (tests/benchmarks/fig10_fullsize.py): the allocator's peak from memory
events, the estimate's error and the memory a case needs. The figure itself is slow and runs only with
the benchmarks."""

import importlib.util
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def fig10():
    """The module, loaded as the benchmark runner loads it (its folder on the path, for fig7_vram and
    report), then the path and the module table as they were."""
    before = set(sys.modules)
    sys.path.insert(0, str(_HERE))
    try:
        spec = importlib.util.spec_from_file_location("bench_fig10_fullsize", _HERE / "fig10_fullsize.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # for its dataclasses
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(_HERE))
        for name in set(sys.modules) - before:
            if name in ("bench_fig10_fullsize", "fig7_vram", "report"):
                del sys.modules[name]


def test_allocator_peak_follows_allocations_and_frees(fig10):
    # (time ns, bytes): 100 in, 50 in, 100 out, 70 in -> held 100, 150, 50, 120: peak 150 at t=20.
    memory = [(30, -100), (10, 100), (20, 50), (40, 70)]  # out of order: sorted by time
    spans = [(0, 100, "outer"), (15, 25, "inner"), (15, 60, "middle")]
    assert fig10.allocator_peak(memory, spans) == (150, 20, "inner")  # the innermost span around the peak


def test_allocator_peak_counts_from_the_first_event_and_may_be_outside_every_span(fig10):
    # Frees of memory from before the call lower the level below its start: the peak is still what was added.
    assert fig10.allocator_peak([(5, -40), (6, 30), (7, 30)], [(100, 200, "later")]) == (20, 7, "")
    assert fig10.allocator_peak([], []) == (0, 0, "")


def test_off_by_is_a_share_of_the_measurement(fig10):
    assert fig10.off_by(200, 230) == pytest.approx(0.15)
    assert fig10.off_by(200, 170) == pytest.approx(-0.15)


def test_a_case_needs_the_larger_of_building_and_running(fig10):
    # Building holds three fp32 copies' worth of parameters; running, the weights and the call's activations.
    assert fig10.build_need(1000, 2000, 500) == 4000
    assert fig10.build_need(1000, 2000, 3000) == 5000


def test_the_quick_cases_are_a_subset_of_the_full_ones(fig10):
    assert set(fig10.QUICK) <= set(fig10.FULL)
    assert {(c.size, c.frames) for c in fig10.FULL} == {(256, 8), (256, 16), (512, 8), (512, 16)}


def test_the_figure_is_drawn_from_its_measurements_and_says_where_it_ran(fig10):
    mib = 2**20
    estimate = {"weights_bytes": 2505 * mib, "activations_bytes": 300 * mib, "peak_in": "UNetMotionModel.ff"}
    measured = {
        "allocator_peak_bytes": 250 * mib, "allocator_peak_in": "UNetMotionModel.attn", "rss_peak_increase_bytes":
        280 * mib, "seconds": 40.0, "profiled_call_seconds": 30.0, "build_seconds": 30.0, "threads": 2,
        "load_average_at_start": 1.0,
    }  # fmt: skip
    results = [
        {"case": {"size": 256, "frames": 8, "dtype": "bfloat16"}, "estimate": estimate, "measured": measured},
        {"case": {"size": 512, "frames": 16, "dtype": "float32"}, "estimate": estimate, "not_measured": "too big"},
    ]
    probe = {f"{op}_{dtype}": 0.01 for op in ("conv", "linear") for dtype in ("float32", "bfloat16", "float16")}
    info = {"cpu": "Some CPU", "cores": 2, "memory_gb": 24}
    figure = fig10.figure(results, probe | {"cpu_fp16_flags": []}, 60.0, info)
    assert figure.number == 10 and "Some CPU" in figure.question and "no GPU" in figure.question
    assert "CPU, not a GPU" in figure.verdict and "within 15% of the allocator's peak in 0 of 1" in figure.verdict
    assert "+20.0000%" in figure.verdict and "1 case(s) not measured" in figure.verdict
    first, second = figure.rows
    assert first[2] == 250.0 and first[3] == 300.0 and first[4] == f"{50 * mib:+,} B (+20.00%)"
    assert first[5] == "attn / ff" and first[6] == 280.0 and first[7] == 30.0  # the faster call
    assert second[2] == "not measured: too big"
    assert not any(note.startswith("Why they agree") for note in figure.notes)
    assert "## 10." in figure.markdown()
