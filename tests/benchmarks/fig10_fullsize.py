"""Figure 10: memory and time of one UNet call on the full-size SD 1.5 architecture, on the CPU.

Memory does not depend on the weights' values, so the models are figure 7's configs built here with
random weights (nothing downloaded): the SD 1.5 UNet and the AnimateDiff v2 motion module, joined as
the engine joins them (``UNetMotionModel.from_unet2d``, engine/models/components.py). Each case, in
a fresh process of its own (``--case``), builds them in fp32, casts to the case's dtype and makes
one guided call on one context window, four times: figure 7's ``guided_call``, as denoisers.py makes it
(CFG: a batch of two, one prompt state per frame, fp32 output and guidance), without a ControlNet.
Measured:

* the process's resident memory in the first call (VmHWM, reset through /proc/self/clear_refs just
  before it) over what it was before: the allocator's peak plus what glibc's malloc keeps and the
  first call's one-time buffers (oneDNN's generated kernels, thread pools);
* the allocator's peak in the second call: every CPU tensor allocation and free (torch.profiler
  memory events, which see inside each kernel: oneDNN's scratch, the attention kernel's buffers),
  from the call's start; the CPU's counterpart of ``torch.cuda.max_memory_allocated``, and what
  figure 7 estimates (the profiler's own buffers would swell the first call's resident memory);
* the wall time of every call but the profiled one: the first and two more (three in all), reported as
  their median (min–max).

Figure 7's estimate is its own model run at each case's settings: the weights counted on the meta
device, plus the peak of live tensor bytes of the same ``guided_call`` on the meta device
(``unet_step`` without ControlNet, in the case's dtype). On a GPU the caching allocator rounds and
fragments on top of that, which figure 7 covers with a margin; on the CPU there is no caching
allocator, so the allocator's peak is the like-for-like number, and the 15 % criterion is applied
to the activations (weights are exact on both sides).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fig7_vram as fig7
import torch
from report import REPEATS, Figure, machine, spread
from torch import nn

HERE = Path(__file__).resolve().parent
MIB = 2**20
TOLERANCE = 0.15  # the issue's: an estimate off by more than this is a wrong model
HEADROOM = 1.25  # a case runs only if this much more than its own need is available
TIMEOUT_S = 3600  # one case, build included


@dataclass(frozen=True)
class Case:
    size: int  # px, square frames
    frames: int  # the context window
    dtype: str  # torch dtype name

    @property
    def name(self) -> str:
        return f"{self.size} px, {self.frames} frames, {self.dtype}"

    def setup(self) -> fig7.Setup:
        return fig7.Setup(self.name, "sd15", "animatediff", self.size, self.frames)


QUICK = [Case(256, 8, "bfloat16")]
FULL = [Case(size, frames, dtype) for dtype in ("float32", "bfloat16") for size in (256, 512) for frames in (8, 16)]


# --- pure helpers ------------------------------------------------------------------------------------


def allocator_peak(memory: list[tuple[int, int]], spans: list[tuple[int, int, str]]) -> tuple[int, int, str]:
    """The peak of the bytes held, from allocation events (time ns, bytes; a free is negative) counted from
    the first one, its time, and the innermost span (start ns, end ns, name) running then ("" if none)."""
    level = peak = 0
    when = memory[0][0] if memory else 0
    for at, nbytes in sorted(memory, key=lambda event: event[0]):
        level += nbytes
        if level > peak:
            peak, when = level, at
    inside = [span for span in spans if span[0] <= when <= span[1]]
    where = max(inside, key=lambda span: (span[0], -span[1]))[2] if inside else ""
    return peak, when, where


def off_by(measured: float, estimated: float) -> float:
    """How far an estimate is from the measurement, as a share of the measurement (+: it overestimates)."""
    return estimated / measured - 1


def build_need(params_fp32: int, weights: int, activations: int) -> int:
    """Bytes a case needs at its worst: while it builds (the image UNet, the motion module and the motion
    UNet at once, fp32, as from_unet2d makes them) or while it runs (weights in the case's dtype, the call)."""
    return max(4 * params_fp32, weights + activations)


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# --- one case, in its own process --------------------------------------------------------------------


def _status(field: str) -> int:
    """A /proc/self/status memory field, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Make VmHWM start again from the current RSS (Linux 4.0+); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status("VmHWM") <= _status("VmRSS") + 4 * MIB


@contextlib.contextmanager
def module_spans(model: nn.Module) -> Iterator[None]:
    """Each module's forward as a profiler range named after it, to tell where the peak happened."""
    names = {id(module): f"{type(model).__name__}.{name}".rstrip(".") for name, module in model.named_modules()}
    open_ranges: list[Any] = []

    def enter(module: nn.Module, _args: Any) -> None:
        span = torch.profiler.record_function("module:" + names.get(id(module), type(module).__name__))
        span.__enter__()
        open_ranges.append(span)

    def leave(module: nn.Module, _args: Any, _out: Any) -> None:
        open_ranges.pop().__exit__(None, None, None)

    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def run_case(case: Case) -> dict[str, Any]:
    """Build the full-size motion UNet on the CPU and make one guided call, measured."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    setup, dtype = case.setup(), getattr(torch, case.dtype)
    started = time.perf_counter()
    with fig7.quiet():
        unet2d, adapter, unet = fig7.motion_unet(setup, "cpu")
        del unet2d, adapter
        unet = unet.to(dtype).eval().requires_grad_(False)
    gc.collect()
    built = time.perf_counter() - started
    models = fig7.Models(unet, nn.Identity(), nn.Identity(), [])

    def call() -> float:
        clock = time.perf_counter()
        fig7.guided_call(models, setup, case.frames, case.size, control=False, device="cpu")
        return time.perf_counter() - clock

    # 1. The process's first call, alone: its time and the resident memory it adds.
    load = os.getloadavg()[0]
    rss_before = _status("VmRSS")
    reset = _reset_peak_rss()
    with torch.inference_mode():
        seconds = call()
    rss_peak = _status("VmHWM") if reset else 0
    gc.collect()
    # 2. More calls alone, so that the time is a median of three (the first one also builds oneDNN's kernels).
    call_seconds = [seconds]
    with torch.inference_mode():
        while len(call_seconds) < REPEATS:
            call_seconds.append(call())
            gc.collect()
    # 3. The same call again under the profiler, which records every allocation (its own event buffers
    # would swell the resident memory of call 1).
    with (
        module_spans(unet),
        torch.inference_mode(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        profiled_seconds = call()
    events = list(prof.profiler.kineto_results.events())
    memory = [(e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"]
    spans = [(e.start_ns(), e.end_ns(), e.name()[7:]) for e in events if e.name().startswith("module:")]
    peak, _, where = allocator_peak(memory, spans)
    return {
        "case": asdict(case),
        "weights_bytes": fig7.weight_bytes(unet),
        "allocator_peak_bytes": peak,
        "allocator_peak_in": where,
        "rss_before_bytes": rss_before,
        "rss_peak_increase_bytes": rss_peak - rss_before if reset else None,
        "seconds": round(seconds, 2),
        "call_seconds": [round(s, 2) for s in call_seconds],
        "profiled_call_seconds": round(profiled_seconds, 2),
        "build_seconds": round(built, 1),
        "threads": torch.get_num_threads(),
        "load_average_at_start": round(load, 2),
    }


# --- figure 7's estimate -----------------------------------------------------------------------------


def estimate(case: Case) -> dict[str, Any]:
    """Figure 7's model at the case's settings: weights and the live-tensor peak of the same call, on meta."""
    setup = case.setup()
    with fig7.quiet():
        unet2d, adapter, unet = fig7.motion_unet(setup)
        params_fp32 = sum(fig7.count(m) for m in (unet2d, adapter, unet))
        unet = unet.to(getattr(torch, case.dtype))
    tracker = fig7.unet_step(fig7.Models(unet, nn.Identity(), nn.Identity(), []), setup, case.frames, case.size, False)
    return {
        "weights_bytes": fig7.weight_bytes(unet),
        "activations_bytes": tracker.peak.bytes,
        "peak_in": tracker.peak.where,
        "params_built_fp32": params_fp32,
    }


def run_in_subprocess(case: Case, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", str(case.size), str(case.frames), case.dtype]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE)
    if done.returncode != 0:
        raise RuntimeError(f"{case.name}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fp16_flags() -> list[str]:
    """The CPU's fp16 arithmetic extensions, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted({"avx512_fp16", "amx_fp16"} & set(flags))


def fp16_probe() -> dict[str, Any]:
    """Seconds of one 3×3 convolution, 320 → 320 channels on a 32² map (the UNet's first level at 256 px),
    and of one linear layer of the same size, in each dtype, the median of three (all three under "runs"):
    why fp16 is not measured on this CPU."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    seconds: dict[str, Any] = {"cpu_fp16_flags": fp16_flags()}
    runs: dict[str, list[float]] = {}
    for name in ("float32", "bfloat16", "float16"):
        dtype = getattr(torch, name)
        x, w = torch.randn(1, 320, 32, 32, dtype=dtype), torch.randn(320, 320, 3, 3, dtype=dtype) / 60
        tokens, lw = torch.randn(1024, 320, dtype=dtype), torch.randn(1280, 320, dtype=dtype) / 18
        with torch.inference_mode():
            for op, run in (("conv", F.conv2d), ("linear", F.linear)):
                args = (x, w, None, 1, 1) if op == "conv" else (tokens, lw)
                run(*args)  # the first call picks and builds its kernel
                times = []
                for _ in range(REPEATS):
                    clock = time.perf_counter()
                    run(*args)
                    times.append(time.perf_counter() - clock)
                seconds[f"{op}_{name}"] = statistics.median(times)
                runs[f"{op}_{name}"] = times
    return seconds | {"runs": runs}


# --- the figure --------------------------------------------------------------------------------------


def measure(quick: bool, scratch: Path) -> Figure:
    del scratch  # nothing is written: the models live in each case's process
    started = time.perf_counter()
    results = []
    for case in QUICK if quick else FULL:
        guess = estimate(case)
        need = build_need(guess["params_built_fp32"], guess["weights_bytes"], guess["activations_bytes"])
        row: dict[str, Any] = {"case": asdict(case), "estimate": guess, "need_bytes": need}
        free = available_bytes()
        if need * HEADROOM > free:
            row["not_measured"] = f"needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
        else:
            gc.collect()
            try:
                row["measured"] = run_in_subprocess(case)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
                row["not_measured"] = str(error)[-300:]
        results.append(row)
    probe = fp16_probe()
    return figure(results, probe, time.perf_counter() - started, machine())


def figure(results: list[dict[str, Any]], probe: dict[str, Any], seconds: float, info: dict[str, Any]) -> Figure:
    """The figure from its measurements (``raw`` holds them all: it can be drawn again from them)."""
    headers = [
        "case", "weights MiB", "activations MiB, allocator peak (measured)", "activations MiB, estimate",
        "estimate vs measured", "peak in (measured / estimated)", "RSS increase MiB", "seconds per call",
    ]  # fmt: skip
    return Figure(
        number=10,
        title="Full-size SD 1.5 + AnimateDiff: one UNet call measured on the CPU, against figure 7's estimate",
        question="Is figure 7's memory model right? The full-size SD 1.5 UNet with the AnimateDiff v2 motion "
        "module (random weights, figure 7's configs), one guided call (CFG batch of two) on one context window, "
        f"measured on this machine's CPU ({info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB, no GPU): "
        "peak memory and time, against figure 7's estimate for the same call.",
        headers=headers,
        rows=[table_row(Case(**row["case"]), row) for row in results],
        target=f"figure 7's activation estimate within {TOLERANCE:.0%} of the CPU allocator's peak",
        verdict=verdict(results),
        notes=notes(results, probe, seconds),
        raw={
            "cases": results,
            "fp16_probe_seconds": probe,
            "seconds": round(seconds, 1),
            "machine": info,
            "how": how_run(results),
        },
    )


def how_run(results: list[dict[str, Any]]) -> str:
    """How the figure was measured, in words, from the measurements themselves."""
    cases = [Case(**r["case"]) for r in results]
    mode = "full" if set(cases) == set(FULL) else "quick" if set(cases) == set(QUICK) else "partial"
    loads = [r["measured"]["load_average_at_start"] for r in results if "measured" in r]
    return (
        f"the {mode} run of fig10_fullsize.measure(): {len(cases)} case(s) one after another, each in a fresh "
        "process" + (f"; load average {_span(loads, '.1f')} as each case's first call started" if loads else "")
    )


def _mib(value: float) -> float:
    return round(value / MIB, 1)


def table_row(case: Case, row: dict[str, Any]) -> list[Any]:
    guess = row["estimate"]
    weights = _mib(guess["weights_bytes"])
    if "measured" not in row:
        return [case.name, weights, f"not measured: {row['not_measured']}", _mib(guess["activations_bytes"]),
                "", guess["peak_in"], "", ""]  # fmt: skip
    got = row["measured"]
    rss = got["rss_peak_increase_bytes"]
    where, guessed = _short(got["allocator_peak_in"]), _short(guess["peak_in"])
    return [
        case.name, weights, _mib(got["allocator_peak_bytes"]), _mib(guess["activations_bytes"]),
        f"{guess['activations_bytes'] - got['allocator_peak_bytes']:+,} B "
        f"({off_by(got['allocator_peak_bytes'], guess['activations_bytes']):+.2%})",
        f"both: {where}" if where == guessed else f"{where} / {guessed}",
        "n/a" if rss is None else _mib(rss), seconds_per_call(got),
    ]  # fmt: skip


def seconds_per_call(measured: dict[str, Any]) -> float | str:
    """The unprofiled calls' median (min–max); a measurement made before they were repeated (one unprofiled
    call and the profiled one) gives the faster of its two, as it was reported then."""
    if len(measured.get("call_seconds", [])) >= REPEATS:
        return spread(measured["call_seconds"], ".1f")
    return min(measured["seconds"], measured["profiled_call_seconds"])


def _short(where: str) -> str:
    return where.removeprefix("UNetMotionModel.") or "(between modules)"


def verdict(results: list[dict[str, Any]]) -> str:
    measured = [r for r in results if "measured" in r]
    if not measured:
        return "not measured: no case ran"
    gaps = [r["estimate"]["activations_bytes"] - r["measured"]["allocator_peak_bytes"] for r in measured]
    errors = [off_by(r["measured"]["allocator_peak_bytes"], r["estimate"]["activations_bytes"]) for r in measured]
    worst = max(range(len(errors)), key=lambda i: abs(errors[i]))
    case = Case(**measured[worst]["case"])
    within = sum(abs(e) <= TOLERANCE for e in errors)
    same_place = sum(r["measured"]["allocator_peak_in"] == r["estimate"]["peak_in"] for r in measured)
    missing = len(results) - len(measured)
    return (
        f"Measured on this machine's CPU, not a GPU: figure 7's activation estimate is within {TOLERANCE:.0%} of "
        f"the allocator's peak in {within} of {len(errors)} cases (largest gap {errors[worst]:+.4%}, "
        f"{gaps[worst]:+,} bytes, at {case.name}), and puts the peak in the same module in {same_place} of "
        f"{len(errors)}; "
        + ("figure 7's model stands unchanged." if within == len(errors) else "figure 7's model is off.")
        + (f" {missing} case(s) not measured (see the table)." if missing else "")
    )


def notes(results: list[dict[str, Any]], probe: dict[str, Any], seconds: float) -> list[str]:
    measured = [r for r in results if "measured" in r]
    extra = [
        (r["measured"]["rss_peak_increase_bytes"] / MIB, r["measured"]["allocator_peak_bytes"] / MIB)
        for r in measured
        if r["measured"]["rss_peak_increase_bytes"] is not None
    ] or [(0.0, 0.0)]
    out = [
        "Ran on the CPU: no GPU took part. Each case is a fresh process that builds the full-size models with "
        "diffusers' random initialisation (fp32, the image UNet, the motion module and the motion UNet at once, "
        "as from_unet2d makes it, then cast), then makes one call under torch.inference_mode with PyTorch's own "
        "CPU kernels (oneDNN convolutions and matmuls, the CPU flash-attention kernel for "
        "scaled_dot_product_attention: no attention matrix, as figure 7 assumes for a GPU).",
        "Weights are the same on both sides by construction (counted, 1,313M parameters of UNet + motion module); "
        "the activation columns are what the call adds on top: the CPU allocator's peak from the call's start "
        "against figure 7's count of live tensors. The estimate is figure 7's own model run at each row's "
        "settings (its rows are fp16 with a ControlNet at 512² × 16 frames; bf16 has fp16's sizes).",
        "RSS increase: the process's resident high-water mark over its resident memory just before the call. It "
        "adds to the allocator's peak what glibc's malloc keeps of freed blocks in its arenas (one per thread) "
        "and the first call's one-time buffers (oneDNN's generated kernels): "
        f"{_span([r - a for r, a in extra], '.0f')} MiB here, varying from run to run; not what figure 7 models.",
    ]
    gaps = [abs(r["estimate"]["activations_bytes"] - r["measured"]["allocator_peak_bytes"]) for r in measured]
    if (
        measured
        and max(gaps) < 4096
        and all(r["measured"]["allocator_peak_in"] == r["estimate"]["peak_in"] for r in measured)
    ):
        out.append(
            f"Why they agree to within {max(gaps)} bytes (the estimate rounds each tensor up to 512 B as CUDA's "
            f"allocator does): the peak is where figure 7 puts it, in {_short(measured[0]['estimate']['peak_in'])}, "
            "the GEGLU feed-forward of the last up block's first transformer at full latent resolution, whose "
            "projection is a matmul that allocates its output and nothing else, on the CPU as on a GPU; whatever "
            "oneDNN's convolutions and the attention kernel allocate inside themselves stays below that peak. The "
            "live-tensor count is the right model for the call; figure 7's margin is left for what a GPU adds "
            "(cuDNN workspaces, the caching allocator's fragmentation)."
        )
    if measured:
        loads = [r["measured"]["load_average_at_start"] for r in measured]
        builds = [r["measured"]["build_seconds"] for r in measured]
        repeated = all(len(r["measured"].get("call_seconds", [])) >= REPEATS for r in measured)
        ratios = [
            r["measured"]["profiled_call_seconds"]
            / statistics.median(r["measured"].get("call_seconds") or [r["measured"]["seconds"]])
            for r in measured
        ]
        how = (
            f"the median (min–max) of the case's {REPEATS} calls without the profiler (the first of them also "
            "builds oneDNN's kernels)"
            if repeated
            else "the faster of the case's two calls (the first alone, the second under the profiler)"
        )
        out.append(
            f"Seconds per call: one call's wall time on {measured[0]['measured']['threads']} threads, {how}; the "
            f"profiled call took {_span(ratios, '.2f')}× that. The machine is shared (load average "
            f"{_span(loads, '.1f')} as the first calls started), so times can move by tens of percent. Building the "
            f"models took {_span(builds, '.0f')} s a case, once (not a timed result)."
        )
    ratio_conv = probe["conv_float16"] / probe["conv_bfloat16"]
    ratio_linear = probe["linear_float16"] / probe["linear_bfloat16"]
    runs = probe.get("runs", {})

    def probe_time(key: str, scale: float, spec: str) -> str:  # median (min–max) where the runs are kept
        if key in runs:
            return spread([scale * t for t in runs[key]], spec)
        return format(scale * probe[key], spec)

    out.append(
        "fp16 is not measured: "
        + (
            ""
            if probe.get("cpu_fp16_flags", fp16_flags())
            else "this CPU has no fp16 arithmetic (no avx512_fp16 or amx_fp16 flag), and "
        )
        + "PyTorch's CPU convolution in fp16 takes a slow path: one 3×3 convolution 320 → 320 on a 32² map took "
        f"{probe_time('conv_float16', 1, '.2f')} s in fp16, {probe_time('conv_bfloat16', 1000, '.1f')} ms in bf16 "
        f"({ratio_conv:.0f}× at the medians) and {probe_time('conv_float32', 1000, '.1f')} ms in fp32; a linear "
        f"layer of that size {ratio_linear:.0f}× bf16's: at such ratios one UNet call would take hours. fp16 "
        "tensors are the size of bf16 ones: the bf16 rows stand for fp16's memory."
        + (f" Each probe time: median (min–max) of {REPEATS} runs after one untimed." if runs else "")
    )
    out.append(f"Measured in {seconds / 60:.1f} minutes, cases one after another.")
    return out


def _span(values: list[float], spec: str) -> str:
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low}–{high}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one case of figure 10, in this process; prints its JSON")
    parser.add_argument("--case", nargs=3, metavar=("SIZE", "FRAMES", "DTYPE"), required=True)
    args = parser.parse_args(argv)
    size, frames, dtype = args.case
    print(json.dumps(run_case(Case(int(size), int(frames), dtype))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
