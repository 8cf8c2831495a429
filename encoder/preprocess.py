"""Image preprocessing, shared by serving and training so the two paths cannot drift.

load_image: PIL / path / bytes / numpy -> RGB PIL (EXIF orientation applied, RGBA, grayscale, CMYK,
palette and 16-bit images converted), with a pixel limit against decompression bombs.
prepare_image: targetpad (aspect ratio at most 1.25, padded with black) + bicubic resize + center
crop -> uint8 HWC. normalize: uint8 HWC -> float32 CHW with the bundle's mean/std.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from encoder.errors import EncoderError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TARGET_PAD_RATIO = 1.25
MAX_PIXELS = 64_000_000  # about 8000 x 8000; larger images are refused, not decoded


def load_image(src, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Open an image from a PIL image, a path, bytes or a numpy array and return it as RGB.

    draft_size: for JPEG files, let the decoder scale down (DCT scaling) to no less than this many
    pixels a side: a 1000 px product photo bound for 64 or 224 px decodes several times faster."""
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, np.ndarray):
        img = _from_array(src)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise EncoderError("empty image bytes")
        img = _open(io.BytesIO(bytes(src)), "image bytes", max_pixels, draft_size)
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise EncoderError(f"image file not found: {path}")
        img = _open(path, str(path), max_pixels, draft_size)
    else:
        raise EncoderError(f"cannot read an image from {type(src).__name__}; pass a PIL image, path, bytes or array")
    if img.width * img.height > max_pixels:
        raise EncoderError(f"image of {img.width}x{img.height} exceeds the pixel limit of {max_pixels}")
    return _to_rgb(img)


def _open(fp, what: str, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    try:
        img = Image.open(fp)
        if img.width * img.height > max_pixels:  # checked before decoding the pixels
            raise EncoderError(f"{what}: {img.width}x{img.height} exceeds the pixel limit of {max_pixels}")
        if draft_size and img.format == "JPEG" and min(img.size) >= 2 * draft_size:
            img.draft("RGB", (draft_size, draft_size))
        img.load()
    except EncoderError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise EncoderError(f"{what}: not a readable image ({e})") from e
    return img


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise EncoderError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = np.clip(arr * 255.0 if arr.max() <= 1.0 else arr, 0, 255).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise EncoderError(f"image array dtype {arr.dtype} not supported; use uint8, uint16 or float")
    return Image.fromarray(np.ascontiguousarray(arr))


def _to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = (arr / max(arr.max(), 1.0) * 255.0).round().astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    return img.convert("RGB")  # L, P, CMYK, YCbCr, 1, F ...


def targetpad(img: Image.Image, ratio: float = TARGET_PAD_RATIO) -> Image.Image:
    """Pad the short side (centered, black) when the aspect ratio exceeds `ratio`."""
    w, h = img.size
    if max(w, h) / min(w, h) <= ratio:
        return img
    side = max(w, h)
    out = Image.new("RGB", (side, side), (0, 0, 0))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def prepare_image(img: Image.Image, image_size: int) -> np.ndarray:
    """targetpad, bicubic resize of the short side, center crop -> uint8 [H, W, 3]."""
    img = targetpad(img)
    w, h = img.size
    if (w, h) != (image_size, image_size):
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img, dtype=np.uint8)


def normalize(pixels: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W]."""
    x = pixels.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.moveaxis(x, -1, -3).copy()


def preprocess(src, image_size: int, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """Any accepted image source -> float32 [3, H, W] ready for the image encoder."""
    return normalize(prepare_image(load_image(src, draft_size=image_size), image_size), mean, std)
