"""Pixel-mode conversion shared by the image loaders of ``vision`` and ``prompting`` (PIL imported lazily)."""

from __future__ import annotations

__all__ = ["to_rgb"]


def to_rgb(image):
    """Any PIL mode as RGB: 16- and 32-bit integer pixels scaled to 8 bits (PIL's ``convert`` would clip them),
    float pixels in [0, 1] scaled to [0, 255], a palette with transparency through RGBA, the rest by ``convert``."""
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode.startswith("I") or mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        top = float(pixels.max()) if pixels.size else 0.0
        if mode.startswith("I;16") or (mode == "I" and 255 < top <= 65535):
            pixels = pixels / 257.0
        elif mode == "I" and top > 65535:
            pixels = pixels * (255.0 / top)
        elif mode == "F" and top <= 1.0:
            pixels = pixels * 255.0
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    elif mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")
