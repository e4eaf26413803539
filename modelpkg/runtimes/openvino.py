"""OpenVINO on the CPU: an IR (``model.xml`` + ``model.bin``) or ONNX file compiled for this machine, computing in
the precision the package asks for (f32, or bf16 on CPUs with AVX-512 BF16 / AMX; an NNCF int8 model runs its
int8 layers on VNNI/AMX either way)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from modelpkg.manifest import OpenVINOOptions
from modelpkg.runtimes.base import ModelRuntime
from modelpkg.runtimes.buckets import pad_to
from modelpkg.tokenizer import EncodedBatch

log = logging.getLogger(__name__)
# OpenVINO compiles kernels per input shape on first use (a new shape costs 2-4x a cached one); padding the
# sequence axis to a multiple of this keeps the set of shapes a server meets small, at a few masked tokens.
SEQUENCE_STEP = 8


def compile_config(threads: int, options: OpenVINOOptions) -> dict[str, object]:
    """One stream of ``threads`` threads, latency-oriented: a replica runs one model call at a time, like the
    profile that chose this package."""
    return {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": options.inference_precision,
    }


class OpenVINORuntime(ModelRuntime):
    name = "openvino"

    def __init__(
        self, model_path: Path, threads: int, options: OpenVINOOptions | None = None, pad_token_id: int = 0
    ) -> None:
        import openvino as ov

        self.pad_token_id = pad_token_id
        self.options = options or OpenVINOOptions()
        core = ov.Core()
        model = core.read_model(str(model_path))
        self.compiled = core.compile_model(model, "CPU", compile_config(threads, self.options))
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: model calls are serialised, as in a replica
        self._input_names = {name for port in self.compiled.inputs for name in port.get_names()}
        self._first_input = self.compiled.inputs[0].any_name
        actual = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        log.debug("%s compiled for CPU, inference precision %s", model_path.name, actual)

    def _infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            result = self._request.infer(feeds)
            return np.array(result[self.compiled.outputs[0]], dtype=np.float32)

    def run(self, batch: EncodedBatch) -> np.ndarray:
        rows, width = batch.input_ids.shape
        if width % SEQUENCE_STEP:
            batch = pad_to(batch, rows, width + SEQUENCE_STEP - width % SEQUENCE_STEP, self.pad_token_id)
        feeds = batch.feeds(self._input_names)
        return self._infer(feeds)

    def run_array(self, inputs: np.ndarray) -> np.ndarray:
        """A model with one tensor input (no tokenizer): ``inputs`` is the whole batch."""
        return self._infer({self._first_input: inputs})
