"""Images a user or an attacker may send: one drawn seven in every pixel format a PNG or
JPEG can carry, and files made to exhaust memory. Shared by the predict and serve tests
and by scripts/load_serve.py."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

STROKES = [(35, 30), (105, 30), (75, 70), (60, 115)]


def seven() -> Image.Image:
    """A 7 drawn dark on white, 140x140 pixels, 8-bit grayscale."""
    img = Image.new("L", (140, 140), 255)
    ImageDraw.Draw(img).line(STROKES, fill=0, width=10)
    return img


def encoded(img: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def alpha_seven() -> Image.Image:
    """The seven as black ink on a fully transparent background."""
    img = Image.new("RGBA", (140, 140), (0, 0, 0, 0))
    ImageDraw.Draw(img).line(STROKES, fill=(0, 0, 0, 255), width=10)
    return img


def readable() -> dict[str, bytes]:
    """The same seven in each format that must read as the plain one does."""
    gray = seven()
    palette = gray.convert("P")
    return {
        "gray.png": encoded(gray),
        "16-bit.png": encoded(Image.fromarray(np.asarray(gray, np.uint16) * 257)),
        "palette.png": encoded(palette),
        "palette-transparent.png": encoded(alpha_seven().convert("P")),
        "rgba.png": encoded(alpha_seven()),
        "cmyk.jpg": encoded(gray.convert("CMYK"), "JPEG", quality=95),
        "frames.png": encoded(gray, save_all=True, append_images=[gray.rotate(90)] * 999),
    }


def refused() -> dict[str, tuple[bytes, str]]:
    """Files that must be refused at once, with a fragment of the one line said."""
    frames = []
    for i in range(1000):
        frame = Image.new("P", (64, 64), 0)
        ImageDraw.Draw(frame).point((i % 64, i // 64), fill=1)
        frames.append(frame)
    return {
        # 48 KB on disk, 400 million pixels decoded.
        "bomb.png": (encoded(Image.new("1", (20_000, 20_000), 0)), "not a readable image"),
        "frames.gif": (encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
                       "GIF images are not supported"),
        "one-pixel.png": (encoded(Image.new("L", (1, 1), 0)), "no digit found"),
    }
