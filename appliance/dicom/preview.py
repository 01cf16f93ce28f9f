"""A PNG of a stored image for the admin page: the middle frame, windowed.

Minimal (issue 7 owns the full preview route): what pydicom's installed handlers decode,
monochrome windowed by the file's first Window Center/Width (else its range), colour as is.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.multival import MultiValue


class NoPreview(ValueError):
    """The instance has no pixel data, or it cannot be decoded here."""


def render_png(path: Path, max_size: int = 512) -> bytes:
    ds = dcmread(path)
    if "PixelData" not in ds:
        raise NoPreview("the instance has no image")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds when no handler decodes the syntax
        raise NoPreview(f"cannot decode this image: {exc}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3:
        image = Image.fromarray(_to_bytes(pixels, None), "RGB")
    else:
        grey = _to_bytes(_rescaled(ds, pixels), _window(ds))
        image = Image.fromarray(255 - grey if photometric == "MONOCHROME1" else grey, "L")
    image.thumbnail((max_size, max_size))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _rescaled(ds: Any, pixels: Any) -> Any:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return pixels.astype(np.float64) * slope + intercept


def _window(ds: Any) -> tuple[float, float] | None:
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    return center, max(width, 1.0)


def _first(value: Any) -> float | None:
    """The first of several windows (PS3.3 C.11.2.1.2 allows more than one)."""
    if value is None or value == "":
        return None
    return float(value[0] if isinstance(value, MultiValue) else value)


def _to_bytes(values: Any, window: tuple[float, float] | None) -> Any:
    values = values.astype(np.float64)
    if window is not None:
        low, high = window[0] - window[1] / 2, window[0] + window[1] / 2
    else:
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) / max(high - low, 1e-9) * 255.0
    return np.clip(scaled, 0, 255).astype(np.uint8)
