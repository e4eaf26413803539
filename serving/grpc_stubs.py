"""The gRPC services optiserve serves, built from the .proto files in ``serving/protocol/`` when first imported:
the Open Inference Protocol's ``inference.GRPCInferenceService`` and the standard ``grpc.health.v1.Health``.

``protoc`` (grpcio-tools) compiles each file into descriptors, which go into a descriptor pool of this module's
own, not protobuf's default one: a process that also imports a client's generated copy of the same protocol
(``tritonclient.grpc`` registers ``inference.*`` there) sees no clash. Ray Serve imports the ``add_*`` functions
by name (``SERVICER_FUNCTIONS``) in its gRPC ingress and routes each method to the replica method of the same name.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocol"
INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"
SERVICER_FUNCTIONS = [f"{__name__}:add_inference_service", f"{__name__}:add_health_service"]


def _compile(proto: str) -> descriptor_pb2.FileDescriptorSet:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="optiserve-proto-") as scratch:
        out = Path(scratch) / "descriptors.pb"
        status = protoc.main(["protoc", f"-I{PROTOCOL_DIR}", f"--descriptor_set_out={out}", proto])
        if status != 0:
            raise RuntimeError(f"protoc could not compile {PROTOCOL_DIR / proto} (exit {status})")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


_POOL = descriptor_pool.DescriptorPool()
for _proto in ("open_inference.proto", "health.proto"):
    for _file in _compile(_proto).file:
        _POOL.Add(_file)


def _messages(proto: str) -> SimpleNamespace:
    """The message classes of ``proto``, by their names (nested ones as attributes of their parent)."""
    file = _POOL.FindFileByName(proto)
    return SimpleNamespace(
        **{name: message_factory.GetMessageClass(d) for name, d in file.message_types_by_name.items()}
    )


inference = _messages("open_inference.proto")
health = _messages("health.proto")


def _add_service(name: str, servicer: Any, server: Any) -> None:
    """Register every method of service ``name`` on ``server``, each calling ``servicer``'s method of its name."""
    service = _POOL.FindServiceByName(name)
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request: Callable[[bytes], Any] = message_factory.GetMessageClass(method.input_type).FromString
        response = message_factory.GetMessageClass(method.output_type).SerializeToString
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=request, response_serializer=response
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))


def add_inference_service(servicer: Any, server: Any) -> None:
    _add_service(INFERENCE_SERVICE, servicer, server)


def add_health_service(servicer: Any, server: Any) -> None:
    _add_service(HEALTH_SERVICE, servicer, server)


def method_names(service: str) -> list[str]:
    return [method.name for method in _POOL.FindServiceByName(service).methods]
