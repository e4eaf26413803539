"""Image packages' preprocessing (modelpkg/images.py, optimizers/image_processor.py): each supported image
processor's steps, written into an ImageSpec and run with Pillow and numpy, give the pixels the processor itself
gives (transformers' PIL backend); decoding turns by EXIF, converts to RGB as transformers does, and refuses
what is not a whole JPEG, PNG or WebP image in one line naming it, before decoding anything too large."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelpkg.errors import OptiserveError
from modelpkg.images import ImageTooLargeError, InvalidImageError, decode, from_text, image_input, preprocess
from optimizers.image_processor import SUPPORTED, image_spec, load_processor
from tests.support.images import encoded, photo

# (processor class, its configuration): the defaults, and the variants that take other code paths
PROCESSORS = [
    ("ViTImageProcessor", {}),
    ("ViTImageProcessor", {"size": {"height": 40, "width": 56}, "resample": 3}),
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}}),  # resize by crop_pct, then crop
    ("ConvNextImageProcessor", {}),  # 384: warp to a square
    ("MobileNetV2ImageProcessor", {}),
    ("MobileNetV1ImageProcessor", {}),
    ("CLIPImageProcessor", {}),
    ("DeiTImageProcessor", {}),
    ("BitImageProcessor", {}),
    ("BeitImageProcessor", {}),
]
# (width, height): landscape, portrait, square, and smaller than every crop (padded by the processor)
SIZES = [(300, 200), (131, 517), (224, 224), (60, 45)]


def _saved(tmp_path: Path, name: str, config: dict) -> Path:
    import transformers

    root = tmp_path / name
    getattr(transformers, f"{name}Pil")(**config).save_pretrained(root)
    return root


@pytest.mark.parametrize(("name", "config"), PROCESSORS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PROCESSORS)])
def test_each_step_matches_the_image_processor(tmp_path: Path, name: str, config: dict) -> None:
    root = _saved(tmp_path, name, config)
    spec, processor = image_spec(root), load_processor(root)
    for seed, size in enumerate(SIZES):
        image = photo(seed, size)
        expected = processor(images=image, return_tensors="np")["pixel_values"][0]
        ours = preprocess(image, spec)
        assert ours.shape == expected.shape == (3, *spec.size)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_the_supported_list_is_what_the_tests_cover() -> None:
    assert set(SUPPORTED) == {name for name, _ in PROCESSORS}


def test_an_image_processor_it_cannot_reproduce_is_refused_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "efficientnet"
    root.mkdir()
    (root / "preprocessor_config.json").write_text('{"image_processor_type": "EfficientNetImageProcessor"}')
    with pytest.raises(OptiserveError, match="EfficientNetImageProcessor is not supported") as raised:
        image_spec(root)
    assert "\n" not in str(raised.value)


def _exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG whose EXIF says: rotate 90 degrees clockwise to show it (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(photo(1, (40, 20)), "JPEG", exif=exif.tobytes())


def test_decoding_turns_by_exif_and_converts_to_rgb_as_transformers_does() -> None:
    from transformers.image_transforms import convert_to_rgb

    assert decode(_exif_rotated_jpeg(), 10**6).size == (20, 40)
    rgba = photo(2).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(120, dtype=np.uint8) * 2, (90, 1))))
    gray, palette = photo(3).convert("L"), photo(4).convert("P")
    for image, fmt in ((rgba, "PNG"), (gray, "PNG"), (palette, "PNG"), (photo(5), "WEBP"), (rgba, "WEBP")):
        data = encoded(image, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        decoded = decode(data, 10**6)
        assert decoded.mode == "RGB"
        np.testing.assert_array_equal(
            np.asarray(decoded), convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)
        )


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's first bytes)."""
    data = encoded(photo(6, (8, 8)), "PNG")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", InvalidImageError, "image is empty"),
        (b"just some text, not an image", InvalidImageError, "not a JPEG, PNG or WebP image"),
        (encoded(photo(7), "GIF"), InvalidImageError, "not a JPEG, PNG or WebP image"),
        (encoded(photo(8), "PNG")[:300], InvalidImageError, "(PNG) cannot be decoded"),
        (encoded(photo(9), "JPEG")[:-500], InvalidImageError, "(JPEG) cannot be decoded"),
        (_png_declaring(50_000, 50_000), ImageTooLargeError, "50000x50000 = 2500000000 pixels; at most 1000000"),
        (_png_declaring(2_000, 1_000), ImageTooLargeError, "2000x1000 = 2000000 pixels; at most 1000000"),
    ],
    ids=["empty", "text", "gif", "truncated-png", "truncated-jpeg", "bomb", "over-the-limit"],
)
def test_what_is_not_a_whole_image_is_refused_naming_it(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error) as raised:
        decode(data, 1_000_000)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert raised.value.status in (400, 413)


def test_images_as_text_base64_data_urls_and_url_safe() -> None:
    data = encoded(photo(10), "PNG")
    plain = base64.b64encode(data).decode()
    assert from_text(plain) == data
    assert from_text(f"data:image/png;base64,{plain}") == data
    assert from_text(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    assert from_text(plain[:40] + "\n" + plain[40:]) == data  # line breaks, as base64 tools write
    for bad, message in (("not base64!", "not base64"), ("data:image/png,abc", "data URL must be")):
        with pytest.raises(InvalidImageError, match=message):
            from_text(bad)


def test_an_image_becomes_the_models_input(tmp_path: Path) -> None:
    spec = image_spec(_saved(tmp_path, "ViTImageProcessor", {"size": {"height": 32, "width": 32}}))
    pixels = image_input(encoded(photo(11), "JPEG"), spec, 10**6)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32 and -1.0 <= pixels.min() < pixels.max() <= 1.0


def test_each_step_alone_matches_the_processors_own_step(tmp_path: Path) -> None:
    """Resize (shortest edge and fixed size), centre crop (larger and smaller than the crop), rescale and normalize,
    each against the PIL backend's method of the same name."""
    from transformers.image_utils import SizeDict

    from modelpkg.images import RESAMPLE, center_crop, scale, shortest_edge_size
    from modelpkg.manifest import ImageSpec

    processor = load_processor(_saved(tmp_path, "CLIPImageProcessor", {}))
    for seed, (width, height) in enumerate(SIZES):
        image = photo(seed, (width, height))
        chw = np.moveaxis(np.asarray(image), -1, 0)
        for resample in ("bilinear", "bicubic", "lanczos"):
            code = {"bilinear": 2, "bicubic": 3, "lanczos": 1}[resample]
            theirs = processor.resize(chw, SizeDict(shortest_edge=50), resample=code)
            ours = np.asarray(image.resize(shortest_edge_size(width, height, 50), resample=RESAMPLE[resample]))
            np.testing.assert_array_equal(np.moveaxis(ours, -1, 0), theirs)
            theirs = processor.resize(chw, SizeDict(height=33, width=47), resample=code)
            ours = np.asarray(image.resize((47, 33), resample=RESAMPLE[resample]))
            np.testing.assert_array_equal(np.moveaxis(ours, -1, 0), theirs)
        for crop in ((40, 40), (100, 70)):
            theirs = processor.center_crop(chw, SizeDict(height=crop[0], width=crop[1]))
            np.testing.assert_array_equal(np.moveaxis(center_crop(np.asarray(image), *crop), -1, 0), theirs)
    values = np.moveaxis(np.asarray(photo(9)), -1, 0)
    rescaled = processor.rescale(values, 1 / 255)
    mean, std = (0.48, 0.45, 0.40), (0.26, 0.26, 0.27)
    spec = ImageSpec(processor="test", resize=(90, 120), rescale=1 / 255)
    np.testing.assert_array_equal(scale(values, spec), rescaled)
    normalized = spec.model_copy(update={"mean": mean, "std": std})
    np.testing.assert_allclose(scale(values, normalized), processor.normalize(rescaled, mean, std), rtol=0, atol=1e-6)
