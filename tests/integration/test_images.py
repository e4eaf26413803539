"""Image classifiers end to end: small random-weight ResNet and ViT (built from configs, heads scaled so the top
label depends on the image) through the chain (ONNX export, ONNX Runtime static int8, OpenVINO + NNCF int8) into
packages that take encoded images, then served beside the MiniLM text model: KServe v2 with a BYTES input over
the binary extension, JSON (base64) and gRPC through the unmodified tritonclient, and the JSON route
``/v1/images/classify``. Outputs are checked against the source model run through its own image processor, and
bad images get a JSON 4xx naming them, never a 5xx."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton

from modelpkg.images import image_input
from modelpkg.package import load_package
from modelpkg.pipeline import TensorPipeline
from optimizers.chain import ChainResult, optimize
from optimizers.image_processor import load_processor
from tests.support import grpc as grpc_client
from tests.support.images import LABELS, encoded, photo, small_cnn_module, tiny_resnet, tiny_vit
from tests.support.paths import ROOT
from tests.unit.modelpkg.test_images import _png_declaring

RECIPE = ROOT / "tests" / "recipes" / "images-ci.yaml"
BUILDERS = {"resnet": tiny_resnet, "vit": tiny_vit}
USER_IMAGES = 50  # the ViT's --data DIR: 10 held-out, 5 validation, 5 calibration, 30 train
# photographs of several sizes and formats, none of them among the chain's data
PHOTOS = [photo(100 + i, (64 + 37 * i, 48 + 23 * (i % 5))) for i in range(12)]
FILES = [encoded(p, ("PNG", "JPEG", "WEBP")[i % 3]) for i, p in enumerate(PHOTOS)]


@pytest.fixture(scope="module")
def image_chains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, ChainResult]]:
    """Both models through the tests' recipe: the ResNet on the built-in images, the ViT on a folder of "the
    user's own" images (``--data DIR``)."""
    root = tmp_path_factory.mktemp("image-chains")
    folder = root / "my-images"
    folder.mkdir()
    for index in range(USER_IMAGES):
        size = (40 + 7 * index, 30 + 5 * (index % 9))
        (folder / f"{index}.jpg").write_bytes(encoded(photo(1000 + index, size), "JPEG"))
    chains = {}
    for name, build in BUILDERS.items():
        source = build(root / name)
        data = folder if name == "vit" else None
        out = root / f"{name}-package"
        chains[name] = (source, optimize(source, out, recipe=RECIPE, cache_dir=root / "cache", data_file=data))
    return chains


def _source_logits(source: Path, images: list) -> np.ndarray:
    """The source model on ``images`` through its own image processor (transformers, not optiserve)."""
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(source).eval()
    pixels = load_processor(source)(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return model(pixel_values=pixels).logits.numpy()


def _agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and mean logit cosine."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return float((reference.argmax(1) == candidate.argmax(1)).mean()), float(
        (unit(reference) * unit(candidate)).sum(1).mean()
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_the_chain_judges_image_candidates_by_top1_top5_and_cosine(image_chains, name: str) -> None:
    source, chain = image_chains[name]
    built = {c.name: c for c in chain.candidates if c.fidelity is not None}
    assert {"torch-fp32", "onnx-fp32", "int8-static", "openvino-int8"} <= set(built)
    for candidate in built.values():
        fidelity = candidate.fidelity
        assert fidelity is not None and fidelity.top1_agreement is not None and fidelity.top5_agreement is not None
    assert built["onnx-fp32"].fidelity.top1_agreement == 1.0  # type: ignore[union-attr]
    manifest = chain.package.manifest
    assert manifest.takes_images and manifest.image is not None and manifest.inputs[0].name == "pixel_values"
    assert manifest.labels == [f"class-{i}" for i in range(LABELS)] or name == "vit"
    report = (chain.package.root / "report.md").read_text()
    assert "top-5 agree" in report
    data = chain.report["data"]
    if name == "vit":  # the user's folder: split once, judged on its own held-out images
        assert data["source"].endswith("my-images") and data["splits"]["heldout"] == USER_IMAGES // 5
    else:
        assert data["source"].startswith("built-in images") and data["splits"]["heldout"] == 290
    # the package, fed the files, agrees with the source fed the same pictures through its own processor
    pipeline = TensorPipeline.from_package(load_package(chain.package.root), threads=1)
    ours = pipeline.run([image_input(f, manifest.image, 10**7) for f in FILES])[0]
    top1, cosine = _agreement(_source_logits(source, [p.convert("RGB") for p in _decoded(FILES)]), ours)
    assert top1 >= 0.75 and cosine >= 0.95, (manifest.version, top1, cosine)


def _decoded(files: list[bytes]) -> list:
    import io

    from PIL import Image

    return [Image.open(io.BytesIO(f)) for f in files]


@pytest.fixture(scope="module")
def served(server, minilm_packages, image_chains) -> Iterator:
    server.deploy([minilm_packages.package.root, *(chain.package.root for _, chain in image_chains.values())])
    try:
        yield server
    finally:
        server.deploy(minilm_packages.package.root)


def _expected(chain: ChainResult) -> np.ndarray:
    package = load_package(chain.package.root)
    assert package.manifest.image is not None
    pipeline = TensorPipeline.from_package(package, threads=1)
    return pipeline.run([image_input(f, package.manifest.image, 10**7) for f in FILES])[0]


def _name(chain: ChainResult) -> str:
    return chain.package.manifest.name


@pytest.mark.serve
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_sends_image_files_and_gets_labels(served, image_chains, binary: bool) -> None:
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    for _, chain in image_chains.values():
        name, expected = _name(chain), _expected(chain)
        # the binary extension carries the files' bytes; JSON carries them as base64 text
        data = FILES if binary else [base64.b64encode(f).decode() for f in FILES]
        tensor = triton.InferInput("image", [len(FILES)], "BYTES")
        tensor.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "label")]
        result = client.infer(name, [tensor], outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-3, atol=1e-3)
        labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
        assert labels == [chain.package.manifest.labels[i] for i in expected.argmax(1)]
        assert client.get_model_metadata(name)["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]


@pytest.mark.serve
def test_tritonclient_grpc_sends_image_files(served, image_chains) -> None:
    _, chain = image_chains["resnet"]
    tensor = triton_grpc.InferInput("image", [len(FILES)], "BYTES")
    tensor.set_data_from_numpy(np.array(FILES, dtype=np.object_))
    result = grpc_client.client(served).infer(_name(chain), [tensor])
    np.testing.assert_allclose(result.as_numpy("logits"), _expected(chain), rtol=1e-3, atol=1e-3)


@pytest.mark.serve
def test_the_json_route_classifies_base64_and_data_urls_beside_text(served, image_chains, minilm_packages) -> None:
    _, chain = image_chains["vit"]
    expected = _expected(chain)
    images = [base64.b64encode(f).decode() for f in FILES[:6]] + [
        f"data:image/{('png', 'jpeg', 'webp')[i % 3]};base64,{base64.b64encode(f).decode()}"
        for i, f in enumerate(FILES[6:], start=6)
    ]
    answer = httpx.post(
        f"{served.url}/v1/images/classify", json={"model": _name(chain), "input": images, "top_k": 3}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    labels = chain.package.manifest.labels
    assert [item["label"] for item in body["data"]] == [labels[i] for i in expected.argmax(1)]
    assert all(len(item["top"]) == 3 and item["top"][0]["label"] == item["label"] for item in body["data"])
    assert body["usage"] == {"images": len(FILES)} and body["model"] == _name(chain)
    # two image models here: the route needs a name; text routes keep serving the text model beside them
    unnamed = httpx.post(f"{served.url}/v1/images/classify", json={"input": images[0]}, timeout=30)
    assert unnamed.status_code == 400 and unnamed.json()["error"]["code"] == "model_required"
    text = httpx.post(f"{served.url}/v1/classify", json={"model": _name(chain), "input": "a cat"}, timeout=30)
    assert text.status_code == 400 and "/v1/images/classify" in text.json()["error"]["message"]
    embeddings = httpx.post(f"{served.url}/v1/embeddings", json={"input": ["a photo of a cat"]}, timeout=30)
    assert embeddings.status_code == 200
    metrics = httpx.get(f"{served.url}/metrics", timeout=30).text
    assert 'route="/v1/images/classify"' in metrics


BAD_IMAGES = {
    "not an image": (b"GIF89a is what this pretends to be", 400, "not a JPEG, PNG or WebP image"),
    "truncated": (FILES[0][: len(FILES[0]) // 2], 400, "cannot be decoded"),
    "empty": (b"", 400, "is empty"),
    "bomb": (_png_declaring(60_000, 60_000), 413, "60000x60000 = 3600000000 pixels"),
}


@pytest.mark.serve
@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_get_a_json_4xx_naming_them(served, image_chains, case: str) -> None:
    data, status, message = BAD_IMAGES[case]
    name = _name(image_chains["resnet"][1])
    answer = httpx.post(
        f"{served.url}/v1/images/classify",
        json={"model": name, "input": [base64.b64encode(FILES[1]).decode(), base64.b64encode(data).decode()]},
        timeout=30,
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert message in error["message"] and "image 1" in error["message"] and "Traceback" not in answer.text
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
    with pytest.raises(Exception, match=message.split(" = ")[0]) as raised:
        client.infer(name, [tensor])
    assert str(status) in str(raised.value)


@pytest.mark.serve
def test_bad_image_requests_get_clear_errors(served, image_chains) -> None:
    name = _name(image_chains["resnet"][1])
    url = f"{served.url}/v2/models/{name}/infer"
    wrong_type = httpx.post(url, json={"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1]}]})
    assert wrong_type.status_code == 400 and "must be BYTES" in wrong_type.json()["error"]
    wrong_name = httpx.post(
        url, json={"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    )
    assert wrong_name.status_code == 400 and "'image' (BYTES" in wrong_name.json()["error"]
    not_base64 = httpx.post(
        url, json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]}
    )
    assert not_base64.status_code == 400 and "not base64" in not_base64.json()["error"]
    for body in ({"input": 3}, {"input": []}, {"input": ["x"], "top_k": 0}, {"input": ["x"], "extra": 1}):
        answer = httpx.post(f"{served.url}/v1/images/classify", json={"model": name, **body}, timeout=30)
        assert 400 <= answer.status_code < 500 and "error" in answer.json(), (body, answer.text)


TORCHVISION_CODE = """import torchvision


def SmallCNN(labels: int = 12):
    return torchvision.models.resnet18(num_classes=labels)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["module", "torchvision"])
def test_a_module_file_that_states_its_preprocessing_is_an_image_model(tmp_path: Path, kind: str) -> None:
    """A plain PyTorch model (here a small CNN; a torchvision ResNet where torchvision loads) with the steps it
    was trained with stated in module.json: the package takes files and runs those steps itself."""
    from optimizers.modules import ModuleRuntime, ModuleSpec

    if kind == "torchvision":
        try:
            import torchvision  # noqa: F401
        except Exception as exc:  # noqa: BLE001 -- the CUDA build matching torch 2.13 fails on import, not only absent
            pytest.skip(f"torchvision does not load beside this CPU torch: {type(exc).__name__}: {exc}")
    root = small_cnn_module(tmp_path / kind, wrap=TORCHVISION_CODE if kind == "torchvision" else None)
    chain = optimize(root, tmp_path / "package", recipe=ROOT / "tests" / "recipes" / "export-only.yaml")
    manifest = chain.package.manifest
    spec = ModuleSpec.read(root).image
    assert manifest.takes_images and manifest.image == spec and spec is not None
    assert not any(f.path.endswith(".py") for f in manifest.files)  # the package never carries model code
    pixels = [image_input(f, spec, 10**7) for f in FILES]
    expected = ModuleRuntime(root, threads=1).run_array(np.stack(pixels))
    got = TensorPipeline.from_package(load_package(chain.package.root), threads=1).run(pixels)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert len(set(expected.argmax(1))) > 1  # the scaled head: labels differ from image to image


@pytest.mark.serve
def test_a_short_locust_run_posts_image_files(served, image_chains, tmp_path: Path) -> None:
    """loadtests/images.py, as a user runs it: plain ``locust`` with a directory of images as its payload."""
    from loadtests.runner import final_stats

    for index, data in enumerate(FILES[:6]):
        (tmp_path / f"{index}.{('png', 'jpg', 'webp')[index % 3]}").write_bytes(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTISERVE_")}
    final = tmp_path / "images"
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests/images.py", "--headless", "--host", served.url,
         "-u", "2", "-r", "2", "-t", "3s", "--payload", str(tmp_path), "--inputs", "3",
         "--model", _name(image_chains["vit"][1]), "--json-file", str(final), "--loglevel", "WARNING"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    stats = final_stats(Path(f"{final}.json"))
    assert stats["requests"] > 5 and stats["failures"] == 0
