"""Image decoding shared by training and serving (the Space imports this module alone: PIL and NumPy only)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (grayscale, RGBA, palette, 16-bit, float) as 8-bit RGB for a 3-channel backbone."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        array = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(array.astype(np.uint8))
    return image.convert("RGB")
