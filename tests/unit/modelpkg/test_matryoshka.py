"""Matryoshka widths: where they are declared (a sentence-transformers model card, or ``--matryoshka-dims``), what
a package with them accepts as ``dimensions``, and how vectors are cut."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelpkg.errors import OptiserveError
from modelpkg.pipeline import DimensionsError, check_dimensions, cut_to, cut_vectors
from optimizers.source import SourceModel
from tests.support.families import build_family
from tests.support.paths import RECIPES


@pytest.fixture(scope="module")
def matryoshka_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_family("bert", tmp_path_factory.mktemp("matryoshka") / "bert", matryoshka_dims=(32, 16, 8))


def test_the_widths_come_from_the_model_card(matryoshka_source: Path, tmp_path: Path) -> None:
    assert SourceModel.load(matryoshka_source).matryoshka_dims == [32, 16, 8]
    plain = build_family("bert", tmp_path / "plain")
    assert SourceModel.load(plain).matryoshka_dims == []
    # a card with two losses naming widths, one of them wider than the model: the union within its width
    losses = [{"loss": "A", "matryoshka_dims": [64, 16]}, {"loss": "B", "matryoshka_dims": [24, 16]}]
    (plain / "README.md").write_text("\n".join(f"```json\n{json.dumps(loss, indent=4)}\n```" for loss in losses))
    assert SourceModel.load(plain).matryoshka_dims == [24, 16]


def test_declared_widths_must_fit_the_model(matryoshka_source: Path) -> None:
    source = SourceModel.load(matryoshka_source)
    assert source.with_matryoshka_dims((4, 12, 4)).matryoshka_dims == [12, 4]
    with pytest.raises(OptiserveError, match=r"not within 1\.\.32"):
        source.with_matryoshka_dims((64,))


def test_cut_vectors_keep_a_prefix_at_unit_length() -> None:
    vectors = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 5.0]], dtype=np.float32)
    cut = cut_vectors(vectors, 2)
    assert np.allclose(cut, [[0.6, 0.8], [1.0, 0.0]])
    assert np.allclose(cut_vectors(vectors, 2, normalize=False), vectors[:, :2])


def test_a_package_says_which_dimensions_it_can_give(matryoshka_source: Path, tmp_path: Path) -> None:
    from optimizers.chain import optimize

    recipe = RECIPES / "families-ci.yaml"
    manifest = optimize(matryoshka_source, tmp_path / "package", profile_items=16, recipe=recipe).package.manifest
    assert manifest.matryoshka_dims == [32, 16, 8]
    vectors = np.ones((2, 32), dtype=np.float32)
    assert cut_to(manifest, vectors, None) is vectors and cut_to(manifest, vectors, 32) is vectors
    assert cut_to(manifest, vectors, 12).shape == (2, 12)  # any width below the model's, not only declared ones
    with pytest.raises(DimensionsError, match="at most 32"):
        check_dimensions(manifest, 33)
    plain = manifest.model_copy(update={"matryoshka_dims": []})
    with pytest.raises(DimensionsError, match="declares no Matryoshka widths"):
        check_dimensions(plain, 16)
