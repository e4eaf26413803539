"""Images for an image classifier's chain, as the model's input tensors (each decoded and preprocessed by the
package's own steps, :mod:`modelpkg.images`, so the chain judges what the server will run).

Built in: the sample photographs and scans that scikit-image, scikit-learn and matplotlib ship inside their
wheels (nothing is downloaded), each augmented into many distinct views (random crops of 50-100% of the area,
aspect 3:4..4:3, mirror, brightness/contrast/colour jitter of up to 20%, sizes from 160 to 640 pixels), a fixed
seed per split, so the splits hold different views. ``--data DIR``: the user's own images (JPEG, PNG, WebP, any
depth below DIR), shuffled once with a fixed seed and split like text data.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from modelpkg.hashing import sha256_tree
from modelpkg.images import decode, preprocess, to_rgb
from modelpkg.manifest import ImageSpec
from optimizers.datasets import DataError, Splits

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MIN_USER_IMAGES = 40  # at least 4 validation, 4 calibration, 8 held-out and 24 training images
DATA_MAX_PIXELS = 100_000_000
# views of each built-in image per split
VIEWS = {"train": 8, "validation": 4, "calibration": 4, "heldout": 10}
SEEDS = {"train": 11, "validation": 12, "calibration": 13, "heldout": 14}
SKIMAGE_FILES = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "logo.png",
    "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "phantom.png",
    "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def builtin_image_files() -> list[Path]:
    """The sample images installed packages ship: scikit-image's ``data`` directory (the ``optimize`` extra),
    scikit-learn's two sample photographs and matplotlib's sample data."""
    files = []
    if skimage := _package_dir("skimage"):
        files += [skimage / "data" / name for name in SKIMAGE_FILES]
    if sklearn := _package_dir("sklearn"):
        files += [sklearn / "datasets" / "images" / name for name in ("china.jpg", "flower.jpg")]
    if matplotlib := _package_dir("matplotlib"):
        sample = matplotlib / "mpl-data" / "sample_data"
        files += [sample / name for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")]
    found = [f for f in files if f.is_file()]
    if len(found) < 8:
        raise DataError("the built-in images need scikit-image installed (pip install 'optiserve[optimize]')")
    return found


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random view of ``image``: a crop of 50-100% of its area at aspect 3:4..4:3, mirrored half the time,
    jittered in brightness, contrast and colour by up to 20%, resized so its longer side is 160..640 pixels."""
    width, height = image.size
    area = width * height * rng.uniform(0.5, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    crop_w = int(min(width, max(8, round(np.sqrt(area * aspect)))))
    crop_h = int(min(height, max(8, round(np.sqrt(area / aspect)))))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    view = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhancer(view).enhance(float(rng.uniform(0.8, 1.2)))
    longest = int(rng.integers(160, 641))
    scale = longest / max(view.size)
    return view.resize(
        (max(1, round(view.size[0] * scale)), max(1, round(view.size[1] * scale))), Image.Resampling.BILINEAR
    )


def builtin_images(spec: ImageSpec, views: dict[str, int] | None = None) -> Splits:
    """Augmented views of the built-in images, preprocessed by ``spec``: ``views`` per image and split."""
    views = views or VIEWS
    files = builtin_image_files()
    originals = [to_rgb(Image.open(f)) for f in files]
    splits: dict[str, list[np.ndarray]] = {}
    for split, count in views.items():
        rng = np.random.default_rng(SEEDS[split])
        splits[split] = [preprocess(augment(image, rng), spec) for image in originals for _ in range(count)]
    return Splits(
        train=splits.get("train", []),
        validation=splits.get("validation", []),
        calibration=splits.get("calibration", []),
        heldout=splits.get("heldout", []),
        origin={
            "source": "built-in images: the sample images scikit-image, scikit-learn and matplotlib ship "
            f"({len(files)} files), augmented into distinct views per split (seeds {SEEDS})",
        },
    )


def user_images(path: Path, spec: ImageSpec) -> Splits:
    """The user's images under ``path`` (a directory), shuffled once with a fixed seed and cut into held-out
    (20%, at most 1,000), validation and calibration (10% each, at most 200) and train (the rest)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"--data {path}: an image model takes a directory of images (JPEG, PNG, WebP)")
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < MIN_USER_IMAGES:
        raise DataError(
            f"--data {path}: {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); the train, validation, calibration "
            f"and held-out splits need at least {MIN_USER_IMAGES}"
        )
    order = np.random.default_rng(0).permutation(len(files))
    shuffled = [files[i] for i in order]
    heldout, validation = min(1000, len(files) // 5), min(200, len(files) // 10)
    cut = np.cumsum([heldout, validation, validation])

    def load(chosen: list[Path]) -> list[np.ndarray]:
        return [preprocess(decode(f.read_bytes(), DATA_MAX_PIXELS, where=f"--data {f}"), spec) for f in chosen]

    return Splits(
        train=load(shuffled[cut[2] :]),
        validation=load(shuffled[cut[0] : cut[1]]),
        calibration=load(shuffled[cut[1] : cut[2]]),
        heldout=load(shuffled[: cut[0]]),
        origin={"source": str(path.resolve()), "sha256": sha256_tree(path), "images": len(files), "seed": 0},
    )
