"""Run every benchmark figure and write BENCHMARKS.md and tests/benchmarks/results.json.

    .venv/bin/python tests/benchmarks/run.py [--quick] [--only 1 3 ...]

`python3 build.py bench [--quick]` runs this with the project's environment.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from jobs import ROOT  # noqa: E402  (puts the repository and the engine tests on the path)
from report import Figure, write_report  # noqa: E402

FIGURES = {
    1: "fig1_overhead",
    2: "fig2_diffusers",
    3: "fig3_clip_length",
    4: "fig4_blender",
    5: "fig5_cache",
    6: "fig6_fidelity",
    7: "fig7_vram",
    8: "fig8_windows",
    9: "fig9_warp",
    10: "fig10_fullsize",
    11: "fig11_cluster",
    12: "fig12_installers",
    13: "fig13_equal_cost",
    14: "fig14_flow",
    15: "fig15_wan_peer",
    16: "fig16_wan_vram",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer sizes and repeats (still three of every timed measurement): about a quarter of an hour on 2 cores",
    )
    parser.add_argument("--only", type=int, nargs="+", choices=FIGURES, help="run only these figures")
    args = parser.parse_args()
    figures = []
    for number in args.only or FIGURES:
        started = time.monotonic()
        print(f"bench: figure {number} ({FIGURES[number]})", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"unsample-bench{number}-") as scratch:
            try:
                figure = importlib.import_module(FIGURES[number]).measure(args.quick, Path(scratch))
            except Exception as error:  # a broken figure is reported, the others still run
                figure = Figure(number, FIGURES[number], "This figure failed to run.", ["error"], [[str(error)]])
                figure.notes.append(traceback.format_exc().splitlines()[-1])
        figure.raw["seconds_to_measure"] = round(time.monotonic() - started, 1)
        print(f"bench: figure {number}: {figure.verdict or 'done'} ({figure.raw['seconds_to_measure']} s)", flush=True)
        figures.append(figure)
    write_report(figures, ROOT / "BENCHMARKS.md", HERE / "results.json", args.quick)
    print(f"bench: wrote {ROOT / 'BENCHMARKS.md'} and {HERE / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
