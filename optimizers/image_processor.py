"""A Hugging Face image processor (``preprocessor_config.json``) as the package's :class:`ImageSpec`: the same
steps, written out, so the replica can run them without transformers (:mod:`modelpkg.images`).

transformers 5 runs an image processor on its torchvision backend where torchvision is installed and on its PIL
backend otherwise; the two resize differently (tensor vs Pillow interpolation). optiserve reproduces the PIL
backend (``*ImageProcessorPil``): the one the installed transformers uses here, where the torchvision wheel that
matches the project's CPU torch does not load (docs/images.md). The tests compare the replica's pixels with it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modelpkg.errors import OptiserveError
from modelpkg.images import RESAMPLE_CODES
from modelpkg.manifest import ImageSpec

PROCESSOR_FILE = "preprocessor_config.json"
# Processors whose PIL backend is exactly resize -> (center crop) -> rescale -> normalize; ConvNext's resize also
# crops by crop_pct below 384 pixels (handled below).
SUPPORTED = (
    "BeitImageProcessor",
    "BitImageProcessor",
    "CLIPImageProcessor",
    "ConvNextImageProcessor",
    "DeiTImageProcessor",
    "MobileNetV1ImageProcessor",
    "MobileNetV2ImageProcessor",
    "ViTImageProcessor",
)


def processor_type(model_dir: Path) -> str:
    """The processor class ``preprocessor_config.json`` names (without a backend suffix)."""
    config = json.loads((model_dir / PROCESSOR_FILE).read_text())
    name = str(config.get("image_processor_type") or "")
    return name.removesuffix("Fast").removesuffix("Pil")


def load_processor(model_dir: Path) -> Any:
    """The PIL backend of the model's image processor (the reference the package's steps are checked against)."""
    import transformers

    name = processor_type(model_dir)
    if name not in SUPPORTED:
        raise OptiserveError(
            f"{model_dir}/{PROCESSOR_FILE}: image processor {name or '(none named)'} is not supported; optiserve "
            f"reproduces {', '.join(SUPPORTED)}"
        )
    pil_class = getattr(transformers, f"{name}Pil", None)
    if pil_class is None:
        raise OptiserveError(f"transformers {transformers.__version__} has no {name}Pil (the PIL backend)")
    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return pil_class.from_pretrained(str(model_dir))
    finally:
        quiet.setLevel(level)


def _size(value: Any) -> dict[str, int]:
    fields = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")
    found = {key: getattr(value, key, None) if not isinstance(value, dict) else value.get(key) for key in fields}
    return {key: int(v) for key, v in found.items() if v is not None}


def image_spec(model_dir: Path) -> ImageSpec:
    """The steps of ``model_dir``'s image processor; raises naming what the package cannot reproduce."""
    processor = load_processor(model_dir)
    name = processor_type(model_dir)
    where = f"{model_dir}/{PROCESSOR_FILE}"
    size = _size(processor.size) if processor.do_resize else {}
    if processor.do_resize and not ({"height", "width"} <= size.keys() or set(size) == {"shortest_edge"}):
        raise OptiserveError(f"{where}: resize size {size} is not supported (height and width, or shortest_edge)")
    crop: tuple[int, int] | None = None
    if getattr(processor, "do_center_crop", False):
        crop_size = _size(processor.crop_size)
        crop = (crop_size["height"], crop_size["width"])
    shortest = size.get("shortest_edge")
    resize: tuple[int, int] | None = (size["height"], size["width"]) if "height" in size else None
    if name == "ConvNextImageProcessor" and shortest is not None:
        # below 384: resize the shorter side to shortest_edge / crop_pct, then crop; from 384: warp to a square
        if shortest < 384:
            crop = (shortest, shortest)
            shortest = int(shortest / processor.crop_pct)
        else:
            resize = (shortest, shortest)
            shortest = None
    resample = int(processor.resample) if processor.resample is not None else 2
    return ImageSpec(
        processor=f"{name} (transformers PIL backend)",
        shortest_edge=shortest,
        resize=resize,
        resample=RESAMPLE_CODES[resample],  # type: ignore[arg-type]
        crop=crop,
        rescale=float(processor.rescale_factor) if processor.do_rescale else None,
        mean=tuple(float(v) for v in processor.image_mean) if processor.do_normalize else None,  # type: ignore[arg-type]
        std=tuple(float(v) for v in processor.image_std) if processor.do_normalize else None,  # type: ignore[arg-type]
    )
