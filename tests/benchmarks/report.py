"""What every benchmark figure returns, and the report they are written into.

Benchmarks measure and report; none of them passes or fails. Each figure module has
``measure(quick: bool, scratch: Path) -> Figure``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    number: int
    title: str
    question: str  # what a user wants to know from it
    headers: list[str]
    rows: list[list[Any]]
    target: str = ""  # the goal, in words
    verdict: str = ""  # met / missed / on paper, in words, with the number that decides
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # every measurement, for the JSON file

    def markdown(self) -> str:
        lines = [f"## {self.number}. {self.title}", "", self.question, ""]
        if self.target:
            lines += [f"**Target:** {self.target}  ", f"**Result:** {self.verdict}", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---:" if i else "---" for i in range(len(self.headers))) + "|")
        lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in self.rows]
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


_REPOSITORY = Path(__file__).resolve().parents[2]
REPEATS = 3  # the fewest runs of any timed measurement, quick mode included: a median needs three


def spread(values: Sequence[float], spec: str = "", unit: str = "") -> str:
    """Repeated measurements as the report writes them: "median (min–max)", each formatted with
    ``spec`` (default: as a table cell), ``unit`` after the median and the max. Fewer than three
    values are refused: a figure must not pass one run off as a median."""
    if len(values) < REPEATS:
        raise ValueError(f"{len(values)} runs: a spread needs at least {REPEATS}")
    show = (lambda v: format(v, spec)) if spec else (lambda v: _cell(float(v)))
    low, high = min(values), max(values)
    return f"{show(statistics.median(values))}{unit} ({show(low)}–{show(high)}{unit})"


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Repeated measurements for results.json: the median, min and max beside every value."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
        "values": list(values),
    }


def machine() -> dict[str, Any]:
    import diffusers
    import torch

    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "commit": _commit(),
    }


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=_REPOSITORY
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_description(quick: bool) -> str:
    """How this run was made, for each figure's "measured" entry: the command line and whether the working
    tree had changes beyond the commit it names."""
    try:
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=_REPOSITORY,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        changed = "unknown"
    tree = "a working tree with uncommitted changes" if changed else "a clean working tree"
    mode = "quick" if quick else "full"
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return f"{mode} run ({command}) from {tree}, load average {os.getloadavg()[0]:.1f} when the report was written"


def write_report(figures: list[Figure], markdown: Path, raw: Path, quick: bool) -> None:
    """Write the report. Figures measured now replace their earlier entries in the raw file; the
    others are kept as they were measured (``--only``), each saying at which commit."""
    info = machine()
    how = run_description(quick)
    for figure in figures:
        figure.raw.setdefault("measured", {"commit": info["commit"], "date": info["date"], "quick": quick, "how": how})
    kept = _earlier_figures(raw, {figure.number for figure in figures})
    every = sorted([*figures, *kept], key=lambda figure: figure.number)
    mixed = (
        f" Figures {', '.join(str(f.number) for f in kept)} are kept from earlier runs (see each one's note)."
        if kept
        else ""
    )
    header = [
        "# Benchmarks",
        "",
        "Written by `python3 build.py bench" + (" --quick`" if quick else "`") + ": measurements, not tests. "
        "Every ratio compares runs made side by side in one sitting on one machine; absolute times are "
        "this machine's and move with its load. A time or a ratio of times is the median of at least "
        f"{REPEATS} runs, its min–max in brackets, and a verdict is decided on the run written here.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB, GPU: {info['gpu']}. "
        f"Python {info['python']}, torch {info['torch']}, diffusers {info['diffusers']}. "
        f"Commit {info['commit']}, {info['date']}"
        + (" (quick mode: fewer repeats and sizes)." if quick else ".")
        + mixed,
        "",
    ]
    markdown.write_text("\n".join(header) + "\n".join(f.markdown() + "\n" for f in every), encoding="utf-8")
    raw.write_text(json.dumps({"machine": info, "quick": quick, "figures": [asdict(f) for f in every]}, indent=2))


def _earlier_figures(raw: Path, measured: set[int]) -> list[Figure]:
    """The figures of the last report that were not measured this time, with a note saying when they were."""
    try:
        earlier = json.loads(raw.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    kept = []
    for data in earlier.get("figures", []):
        if data["number"] in measured:
            continue
        figure = Figure(**data)
        when = figure.raw.get("measured") or {
            "commit": earlier["machine"]["commit"],
            "date": earlier["machine"]["date"],
        }
        note = f"Measured at commit {when['commit']}, {when['date']}, in an earlier run of the benchmarks."
        if note not in figure.notes:
            figure.notes.append(note)
        kept.append(figure)
    return kept
