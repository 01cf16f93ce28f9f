"""Render one frame of a stored instance as PNG or JPEG (``/preview``, WADO-RS ``/rendered``),
or give it uncompressed (WADO-RS frames).

These functions run in the pixel helper process (``pixels.worker``, through the store): the
serving process never imports numpy, and a decoder crash takes down only the helper. Grey
images go through the modality LUT (rescale) and the first VOI window of the file, or the
frame's own range when it has none; MONOCHROME1 is inverted; colour images are shown as RGB.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO

from pydicom.dataset import Dataset


class Undecodable(ValueError):
    """The pixel data cannot be decoded or rendered here (no codec, no pixel data)."""


class NoSuchFrame(Undecodable):
    """The instance has fewer frames (or none)."""


def decode_frame(src: BinaryIO, index: int) -> tuple[Any, Dataset]:
    """The frame ``index`` (from 0) as an array, with the dataset's other elements."""
    from pydicom import dcmread, pixels

    header = dcmread(src, stop_before_pixels=True)
    src.seek(0)
    frames = int(header.get("NumberOfFrames") or 1)
    if index >= frames:
        raise NoSuchFrame(f"no frame {index + 1}: the instance has {frames}")
    ds = Dataset()
    try:
        frame = pixels.pixel_array(src, ds_out=ds, index=index)
    except (AttributeError, KeyError) as exc:
        raise Undecodable(f"no pixel data: {exc}") from exc
    except (ValueError, NotImplementedError, RuntimeError) as exc:
        raise Undecodable(f"cannot decode the pixel data: {exc}") from exc
    return frame, ds


def to_8bit(frame: Any, ds: Dataset) -> Any:
    """A displayable 8-bit image of a decoded frame."""
    import numpy as np
    from pydicom import pixels

    if frame.ndim == 3 and frame.shape[-1] in (3, 4):  # colour, already RGB
        if frame.dtype != np.uint8:
            frame = frame.astype(np.float64) * 255.0 / max(float(frame.max()), 1.0)
        return frame.astype(np.uint8)
    if frame.ndim != 2:
        raise Undecodable(f"cannot render pixel data of shape {frame.shape}")
    values = pixels.apply_modality_lut(frame, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        values = pixels.apply_voi_lut(values, ds, index=0).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0.0
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.clip(0, 255).astype(np.uint8)


def render_file(path: str, index: int = 0, fmt: str = "PNG", quality: int = 90) -> bytes:
    """Frame ``index`` of the Part 10 file at ``path`` encoded as ``fmt`` (PNG or JPEG)."""
    from PIL import Image

    with open(path, "rb") as src:
        frame, ds = decode_frame(src, index)
    image = Image.fromarray(to_8bit(frame, ds))
    if fmt == "JPEG" and image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()


def frame_file(path: str, index: int) -> bytes:
    """Frame ``index`` uncompressed (``application/octet-stream`` of WADO-RS frames)."""
    with open(path, "rb") as src:
        frame, _ = decode_frame(src, index)
    return bytes(frame.tobytes())
