"""Encoded image files in, the model's input tensor out: the steps an image package's manifest records
(:class:`~modelpkg.manifest.ImageSpec`), run with Pillow and numpy as the source's image processor runs them
(transformers' PIL backend), so a replica needs neither transformers nor torch to take a JPEG.

Decoding is bounded: only JPEG, PNG and WebP are opened, the pixels an image declares are checked against a limit
before any are decoded (a decompression bomb costs its header), and a truncated or malformed file is an error
that names the image. The server runs this off its event loop, under a time limit (serving/served.py).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelpkg.errors import OptiserveError
from modelpkg.manifest import ImageSpec

FORMATS = ("JPEG", "PNG", "WEBP")
# The pixel limit is ours (max_pixels, checked before decoding); Pillow's own warning and error thresholds
# (89 and 179 megapixels) would otherwise override a limit set above them, or warn below it.
Image.MAX_IMAGE_PIXELS = None
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# transformers' PILImageResampling values, as a preprocessor_config.json records ``resample``
URL_SAFE = str.maketrans("-_", "+/")  # base64url to the standard alphabet
RESAMPLE_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class InvalidImageError(OptiserveError, ValueError):
    """An input is not an image this server decodes (not JPEG/PNG/WebP, truncated, malformed, not base64)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_image"
    public_message = None


class ImageTooLargeError(OptiserveError, ValueError):
    """An image declares more pixels than the server decodes."""

    status = 413
    type = "invalid_request_error"
    code = "image_too_large"
    public_message = None


def decode(data: bytes, max_pixels: int, where: str = "image") -> Image.Image:
    """``data`` (a JPEG, PNG or WebP file) as an RGB image, turned upright by its EXIF orientation; transparency
    is composited over white and grayscale or palette images become RGB, as transformers' ``convert_to_rgb``
    does. Raises :class:`ImageTooLargeError` for more than ``max_pixels`` pixels (checked from the header, before
    decoding) and :class:`InvalidImageError` for anything that is not a whole image of those formats."""
    if not data:
        raise InvalidImageError(f"{where} is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise InvalidImageError(f"{where} is not a JPEG, PNG or WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"{where} cannot be read as {'/'.join(FORMATS)}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{where} is {width}x{height} = {width * height} pixels; at most {max_pixels} (OPTISERVE_MAX_IMAGE_PIXELS)"
        )
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"{where} ({image.format}) cannot be decoded: {exc}") from None
    return to_rgb(upright)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited over white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def shortest_edge_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """(width, height) with the shorter side ``shortest_edge`` long and the longer scaled (rounded down), as
    transformers' ``get_resize_output_image_size(default_to_square=False)`` computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre ``height`` x ``width`` of an (H, W, C) array; a side shorter than that is padded with zeros
    around the image (as transformers' ``center_crop`` does)."""
    rows, cols = pixels.shape[:2]
    if rows >= height and cols >= width:
        top, left = (rows - height) // 2, (cols - width) // 2
        return pixels[top : top + height, left : left + width]
    padded_rows, padded_cols = max(rows, height), max(cols, width)
    padded = np.zeros((padded_rows, padded_cols, pixels.shape[2]), dtype=pixels.dtype)
    top, left = -(-(padded_rows - rows) // 2), -(-(padded_cols - cols) // 2)
    padded[top : top + rows, left : left + cols] = pixels
    return center_crop(padded, height, width)


def preprocess(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """An RGB image as the model's float32 ``[3, height, width]`` input: resize, center-crop, rescale, normalize."""
    resample = RESAMPLE[spec.resample]
    if spec.shortest_edge is not None:
        image = image.resize(shortest_edge_size(*image.size, spec.shortest_edge), resample=resample)
    elif spec.resize is not None:
        height, width = spec.resize
        image = image.resize((width, height), resample=resample)
    pixels = np.asarray(image)
    if spec.crop is not None:
        pixels = center_crop(pixels, *spec.crop)
    return scale(pixels.transpose(2, 0, 1), spec)


def scale(chw: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """0..255 pixels (channels first) as float32: multiplied by ``rescale`` (in float64, as transformers does),
    then normalized per channel by ``mean`` and ``std``."""
    values = (chw.astype(np.float64) * spec.rescale).astype(np.float32) if spec.rescale else chw.astype(np.float32)
    if spec.mean is not None and spec.std is not None:
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
        values = (values - mean) / std
    return np.ascontiguousarray(values, dtype=np.float32)


def image_input(data: bytes, spec: ImageSpec, max_pixels: int, where: str = "image") -> np.ndarray:
    """An encoded image file as the model's input tensor (:func:`decode`, then :func:`preprocess`)."""
    return preprocess(decode(data, max_pixels, where), spec)


def from_text(value: str, where: str = "image") -> bytes:
    """An image sent as text in JSON: base64 (standard or URL-safe alphabet), or a ``data:`` URL holding it."""
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InvalidImageError(f"{where}: a data URL must be data:<type>;base64,<data>")
    cleaned = "".join(value.split()).translate(URL_SAFE)
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError(f"{where} is not base64 text (nor a data: URL holding it)") from None
