"""Clients of the server's gRPC port: ``tritonclient.grpc`` (unmodified, as Triton's users run it) and the
standard health check, called with the server's own message classes (serving/grpc_stubs.py)."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc

from serving.grpc_stubs import health, inference


def client(server: Any) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(url=f"127.0.0.1:{server.grpc_port}")


def text_input(texts: list[str], name: str = "text") -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object))
    return tensor


def health_check(server: Any, service: str = "") -> Any:
    """``grpc.health.v1.Health/Check`` for ``service`` (as grpc_health_probe and Kubernetes' gRPC probe call it)."""
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health.HealthCheckRequest.SerializeToString,
            response_deserializer=health.HealthCheckResponse.FromString,
        )
        return check(health.HealthCheckRequest(service=service), timeout=30)


def raw_infer(server: Any, request: Any, metadata: list[tuple[str, str]] | None = None) -> tuple[Any, Any]:
    """``ModelInfer`` with a request message built by hand (one a client library would refuse to send): the
    response and the call (its trailing metadata)."""
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=inference.ModelInferRequest.SerializeToString,
            response_deserializer=inference.ModelInferResponse.FromString,
        )
        return infer.with_call(request, metadata=metadata, timeout=30)
