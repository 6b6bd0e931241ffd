"""Wall time and peak memory of a restyle job against clip length, on tiny models (CPU).

    .venv/bin/python tests/benchmarks/clip_length.py [--frames 16 160] [--size 512] [--steps 2]

Each job runs in its own worker process (the way Blender runs it); peak memory is that
process's maximum resident set size. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "engine")]

from conftest import write_clip  # noqa: E402

from blender_unsample.engine.tiny_models import build_tiny_models  # noqa: E402


def run_job(models, clip: Path, out: Path, steps: int) -> tuple[float, float]:
    command = [
        sys.executable, "-m", "blender_unsample.engine", "restyle", "--frames", str(clip), "--out", str(out),
        "--prompt", "an oil painting", "--model", str(models.checkpoint), "--motion-adapter",
        str(models.motion_adapter), "--controlnet", str(models.controlnet), "--steps", str(steps),
        "--device", "cpu", "--progress", "none",
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"job failed: {' '.join(command)}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 160])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        models = build_tiny_models(root / "models")
        rows = []
        for frames in args.frames:
            clip = root / f"clip{frames}"
            write_clip(clip, frames, size=(args.size, args.size))
            seconds, peak = run_job(models, clip, root / f"out{frames}", args.steps)
            pixels_mb = frames * args.size * args.size * 3 / 2**20
            rows.append((frames, seconds, peak, pixels_mb))
    print(f"{args.size}x{args.size} px, {args.steps} steps, tiny models on the CPU\n")
    print("| frames | wall s | s per frame | peak RSS MiB | clip pixels (uint8) MiB |")
    print("|---:|---:|---:|---:|---:|")
    for frames, seconds, peak, pixels_mb in rows:
        print(f"| {frames} | {seconds:.1f} | {seconds / frames:.3f} | {peak:.0f} | {pixels_mb:.0f} |")


if __name__ == "__main__":
    main()
