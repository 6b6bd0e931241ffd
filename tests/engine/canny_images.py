"""Test images for the canny hint: uint8 RGB (H, W, 3), made from a seed, each stressing one part of
the annotator's algorithm (channel choice, thresholds on exact 8-bit steps, thin lines, borders)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw


def photo(rng: np.random.Generator) -> np.ndarray:
    """Smooth colour gradients and soft blobs under sensor-like noise, as in a video frame."""
    height, width = 256, 320
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.stack(
        [
            128 + 90 * np.sin(x / 37 + 1.0) * np.cos(y / 53),
            128 + 80 * np.cos(x / 29 - y / 41),
            128 + 70 * np.sin((x + y) / 61 + 2.0),
        ],
        axis=-1,
    )
    for _ in range(8):  # objects whose outlines are soft to a varying degree, as a lens draws them
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius, softness = rng.uniform(15, 60), rng.uniform(0.5, 4)
        distance = np.sqrt((y - cy) ** 2 + ((x - cx) * rng.uniform(0.6, 1.6)) ** 2)
        inside = 1 / (1 + np.exp(np.clip((distance - radius) / softness, -50, 50)))
        image += inside[..., None] * rng.uniform(-120, 120, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def shapes(rng: np.random.Generator) -> np.ndarray:
    """Flat-coloured rectangles, ellipses and polygons over one another."""
    image = Image.new("RGB", (320, 240), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for index in range(14):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(-20, 300)), int(rng.integers(-20, 220))
        w, h = int(rng.integers(15, 120)), int(rng.integers(15, 120))
        if index % 3 == 0:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        elif index % 3 == 1:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            points = [(int(rng.integers(0, 320)), int(rng.integers(0, 240))) for _ in range(3)]
            draw.polygon(points, fill=colour)
    return np.asarray(image).copy()


def thin_lines(rng: np.random.Generator) -> np.ndarray:
    """One-pixel lines at many angles, in several greys, and a circle outline."""
    image = Image.new("RGB", (200, 200), (235, 230, 225))
    draw = ImageDraw.Draw(image)
    for angle in np.linspace(0, np.pi, 11, endpoint=False):
        grey = int(rng.integers(0, 120))
        dx, dy = 90 * np.cos(angle), 90 * np.sin(angle)
        draw.line((100 - dx, 100 - dy, 100 + dx, 100 + dy), fill=(grey, grey, grey), width=1)
    draw.ellipse((20, 20, 180, 180), outline=(40, 60, 200), width=1)
    draw.line((0, 5, 199, 5), fill=(0, 0, 0), width=1)  # along the border
    return np.asarray(image).copy()


def rounding(rng: np.random.Generator) -> np.ndarray:
    """8-bit steps at and around the thresholds: a step of s levels gives a Sobel L1 of 4s, so steps
    of 25 and 50 land exactly on 100 and 200; slow ramps rounded to 8 bits add one-level stairs."""
    height, width = 120, 240
    image = np.zeros((height, width, 3), np.float64)
    ramp = np.linspace(30, 90, width)  # about a quarter level per pixel: stairs after rounding
    image[:] = ramp[None, :, None]
    for index, step in enumerate((24, 25, 26, 49, 50, 51, 80)):
        top, bottom = 10 + 15 * index, 20 + 15 * index
        image[top:bottom, 40:200] += step
        image[top:bottom, 120:200, index % 3] += step / 2  # one channel steps further
    image += rng.uniform(-0.5, 0.5, image.shape) * 0.98  # below one level: rounding decides
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def odd_size(rng: np.random.Generator) -> np.ndarray:
    """An odd, non-square size, with shapes cut by every border, and noise."""
    height, width = 97, 131
    image = np.full((height, width, 3), 90.0)
    image[:40, :50] = (220, 40, 40)
    image[60:, 100:] = (30, 200, 90)
    image[30:70, -20:] = (250, 250, 250)
    y, x = np.mgrid[0:height, 0:width]
    image[(y - 50) ** 2 + (x - 65) ** 2 < 22**2] = (20, 20, 160)
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def colour_edges(rng: np.random.Generator) -> np.ndarray:
    """Edges between colours of (nearly) equal luminance, which a grey image would not show."""
    height, width = 128, 160
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :] = (200, 100, 50)
    image[:, 40:80] = (100, 151, 45)  # about the same Rec. 601 grey as the background
    image[:, 80:120] = (200, 100, 170)  # only blue differs
    image[40:90, 20:140] = (90, 90, 240)
    noise = rng.integers(-2, 3, image.shape)
    return np.clip(image.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def texture(rng: np.random.Generator) -> np.ndarray:
    """Fine random texture: many equal gradient magnitudes side by side, the ties of the thinning step."""
    coarse = rng.integers(0, 256, (48, 56, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((112, 96), Image.NEAREST)).copy()


def spiral(rng: np.random.Generator) -> np.ndarray:
    """A long, winding low-contrast band (weak edges only) with one short high-contrast stretch: its
    outline is kept only through hysteresis along hundreds of pixels."""
    image = Image.new("RGB", (160, 160), (100, 100, 100))
    draw = ImageDraw.Draw(image)
    turns = np.linspace(0, 5 * 2 * np.pi, 600)
    radius = 6 + 11 * turns / (2 * np.pi)
    points = [(80 + r * np.cos(t), 80 + r * np.sin(t)) for r, t in zip(radius, turns, strict=True)]
    level = 100 + int(rng.integers(33, 38))  # a step of about 35 levels: magnitudes between the thresholds
    draw.line(points, fill=(level, level, level), width=3)
    draw.line(points[-20:], fill=(200, 200, 200), width=3)
    return np.asarray(image).copy()


IMAGES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "photo": photo,
    "shapes": shapes,
    "thin_lines": thin_lines,
    "rounding": rounding,
    "odd_size": odd_size,
    "colour_edges": colour_edges,
    "texture": texture,
    "spiral": spiral,
}


def make_image(name: str, seed: int = 0) -> np.ndarray:
    return IMAGES[name](np.random.default_rng(seed))
