"""Image classifiers as sources (optimizers/source.py, image_processor.py, image_data.py): a Hugging Face image
classifier with its processor, a plain PyTorch module stating its preprocessing, the built-in images and a
user's folder of images; and the one-line refusals around them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modelpkg.errors import OptiserveError
from optimizers.datasets import DataError
from optimizers.fidelity import output_fidelity, top_k_agreement
from optimizers.image_data import MIN_USER_IMAGES, builtin_image_files, builtin_images, user_images
from optimizers.source import SourceModel
from tests.support.images import LABELS, SIZE, encoded, photo, tiny_resnet, tiny_vit


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_resnet(tmp_path_factory.mktemp("images") / "resnet")


def test_a_hugging_face_image_classifier_is_a_source_taking_images(resnet_dir: Path) -> None:
    source = SourceModel.load(resnet_dir)
    assert source.task == "classification" and source.tokenizer is None
    assert source.labels == [f"class-{i}" for i in range(LABELS)]
    assert source.input is not None and source.input.shape == ["batch", 3, SIZE, SIZE]
    assert source.image is not None and source.image.crop == (SIZE, SIZE) and source.image.resample == "bicubic"
    assert source.image.shortest_edge == int(SIZE / 0.875)  # ConvNext's crop_pct: resize larger, then crop
    assert "PIL backend" in source.image.processor


def test_a_vit_warps_to_its_size(tmp_path: Path) -> None:
    source = SourceModel.load(tiny_vit(tmp_path / "vit"))
    assert source.image is not None and source.image.resize == (SIZE, SIZE) and source.image.crop is None


def test_a_directory_with_a_tokenizer_and_an_image_processor_is_refused_in_one_line(
    resnet_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    both = tmp_path / "both"
    shutil.copytree(resnet_dir, both)
    shutil.copy2(tiny_model_dir / "tokenizer.json", both / "tokenizer.json")
    with pytest.raises(OptiserveError, match="both a tokenizer and an image processor") as raised:
        SourceModel.load(both)
    assert "\n" not in str(raised.value)


def test_an_image_model_that_is_not_a_classifier_is_refused(resnet_dir: Path, tmp_path: Path) -> None:
    backbone = tmp_path / "backbone"
    shutil.copytree(resnet_dir, backbone)
    config = (backbone / "config.json").read_text().replace("ResNetForImageClassification", "ResNetModel")
    (backbone / "config.json").write_text(config)
    with pytest.raises(OptiserveError, match="must be an image classifier"):
        SourceModel.load(backbone)


def test_the_built_in_images_ship_with_installed_packages_and_make_distinct_views(resnet_dir: Path) -> None:
    files = builtin_image_files()
    assert len(files) >= 20 and all(f.is_file() for f in files)
    spec = SourceModel.load(resnet_dir).image
    assert spec is not None
    views = {"train": 1, "validation": 1, "calibration": 2, "heldout": 2}
    splits = builtin_images(spec, views)
    assert len(splits.heldout) == 2 * len(files) and len(splits.calibration) == 2 * len(files)
    assert all(item.shape == (3, SIZE, SIZE) and item.dtype == np.float32 for item in splits.heldout)
    heldout = {item.tobytes() for item in splits.heldout}
    assert len(heldout) == len(splits.heldout)  # every view differs
    assert not heldout & {item.tobytes() for item in splits.calibration}  # and the splits share none


def test_a_users_folder_of_images_is_split_once_and_the_same_way(resnet_dir: Path, tmp_path: Path) -> None:
    spec = SourceModel.load(resnet_dir).image
    assert spec is not None
    folder = tmp_path / "mine"
    (folder / "nested").mkdir(parents=True)
    for i in range(MIN_USER_IMAGES):
        target = folder / ("nested" if i % 2 else "") / f"{i}.{('png', 'jpg', 'webp')[i % 3]}"
        target.write_bytes(
            encoded(photo(i, (50 + i, 40)), {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[target.suffix[1:]])
        )
    (folder / "notes.txt").write_text("not an image")
    first, again = user_images(folder, spec), user_images(folder, spec)
    sizes = [len(getattr(first, s)) for s in ("train", "validation", "calibration", "heldout")]
    assert sizes == [24, 4, 4, 8]
    assert [a.tobytes() for a in first.heldout] == [b.tobytes() for b in again.heldout]
    (folder / "0.png").unlink()
    with pytest.raises(DataError, match=f"39 images .*at least {MIN_USER_IMAGES}"):
        user_images(folder, spec)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "1.png").unlink(missing_ok=True)
    with pytest.raises(OptiserveError, match=r"broken\.png"):
        user_images(folder, spec)


def test_top_5_agreement_counts_shared_labels() -> None:
    reference = np.array([[9.0, 8, 7, 6, 5, 0, 0, 0]])
    assert top_k_agreement(reference, reference, 5) == 1.0
    swapped = np.array([[9.0, 8, 7, 6, 0, 5, 0, 0]])  # one of the five replaced
    assert top_k_agreement(reference, swapped, 5) == pytest.approx(0.8)
    assert output_fidelity(reference, swapped, task="classification").top5_agreement == pytest.approx(0.8)
    assert output_fidelity(reference[:, :5], reference[:, :5], task="classification").top5_agreement is None
