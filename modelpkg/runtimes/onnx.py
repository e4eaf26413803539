"""ONNX Runtime sessions for exported text models (input ids, mask, token types → embedding or logits)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from modelpkg.runtimes.base import CPU_PROVIDER, ModelRuntime
from modelpkg.runtimes.onnx_options import Provider, provider_name
from modelpkg.tokenizer import EncodedBatch

log = logging.getLogger(__name__)


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def check_external_data(model_path: Path) -> None:
    """Refuse ONNX external-data references that leave the model's directory (absolute paths, ``..``, links)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors  # initializers, attributes and subgraphs

    from modelpkg.errors import PackageError

    root = model_path.parent.resolve()
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (root / location).resolve()
        if Path(location).is_absolute() or ".." in Path(location).parts or not target.is_relative_to(root):
            raise PackageError(
                f"{model_path.name}: tensor {tensor.name!r} points at external data {location!r} outside the package"
            )


class OnnxRuntime(ModelRuntime):
    name = "onnxruntime"

    def __init__(
        self, model_path: Path, threads: int, providers: list[Provider] | None = None, device: str = "cpu"
    ) -> None:
        check_external_data(model_path)
        available = ort.get_available_providers()
        wanted = providers or [CPU_PROVIDER]
        chosen = [p for p in wanted if provider_name(p) in available]
        for missing in sorted({provider_name(p) for p in wanted} - set(available)):
            log.warning("ONNX Runtime provider %s is not available here (have %s); skipping it", missing, available)
        self.session = ort.InferenceSession(
            str(model_path), session_options(threads), providers=chosen or [CPU_PROVIDER]
        )
        self.providers = self.session.get_providers()
        self.device = device if any(p != CPU_PROVIDER for p in self.providers) else "cpu"
        self._input_names = {i.name for i in self.session.get_inputs()}

    def run(self, batch: EncodedBatch) -> np.ndarray:
        feeds = batch.feeds(self._input_names)
        outputs = self.session.run(None, feeds)
        return np.asarray(outputs[0], dtype=np.float32)

    def run_array(self, inputs: np.ndarray) -> np.ndarray:
        """A model with one tensor input (no tokenizer): ``inputs`` is the whole batch."""
        (name,) = self._input_names
        return np.asarray(self.session.run(None, {name: inputs})[0], dtype=np.float32)
