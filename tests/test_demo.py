"""The README's first command, offline: `python3 build.py demo --tiny` produces its three outputs."""

import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_demo_writes_styled_frames_a_blend_and_a_contact_sheet(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "build.py", "demo", "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    styled = sorted((out / "styled").glob("*.png"))
    assert len(styled) == 24
    assert Image.open(styled[0]).size == (256, 144)
    assert (out / "demo.blend").stat().st_size > 10_000
    assert not (out / "demo.blend1").exists()
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.width == 6 * 256
    assert "noise" in result.stdout, "the tiny demo must say its pictures are noise"
    blend = str(out / "demo.blend")
    strips = subprocess.run([sys.executable, "-c", READ_STRIPS, blend], capture_output=True, text=True)
    by_name = dict(line.split("|", 1) for line in strips.stdout.splitlines() if line.startswith("Clip"))
    assert by_name == {"Clip": "MOVIE 1 1 24 found", "Clip (Unsample)": "IMAGE 2 1 24 found"}, strips.stderr


# Opens the saved .blend in Blender (a process of its own: bpy stays out of this one).
READ_STRIPS = """
import sys, bpy, os
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
editor = bpy.context.scene.sequence_editor
for s in (editor.strips if hasattr(editor, "strips") else editor.sequences):
    media = s.filepath if s.type == "MOVIE" else s.directory + s.elements[0].filename
    found = "found" if os.path.isfile(bpy.path.abspath(media)) else "missing"
    print(s.name, " ".join(map(str, (s.type, s.channel, s.frame_final_start, s.frame_final_duration, found))), sep="|")
"""


def test_demo_without_network_names_the_tiny_option(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import build, socket; build._reachable = lambda a: False; build.main(['demo'])"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--tiny" in result.stderr
