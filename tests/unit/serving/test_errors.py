"""The error catalogue (serving/errors.py): one declaration per error, one mapping to both protocols' bodies, and
HAProxy's own error pages (serving/haproxy-local) held to the same table."""

from __future__ import annotations

import re

import orjson
import pytest

from modelpkg.errors import OptiserveError, OverloadedError, PackageError
from modelpkg.pipeline import DimensionsError
from serving.errors import (
    InferenceFailedError,
    ModelNotFoundError,
    TooManyInputsError,
    catalogue,
    error_response,
    run_error,
)
from tests.support.paths import ROOT

HAPROXY_LOCAL = ROOT / "serving" / "haproxy-local"


def test_each_code_means_one_status_and_type() -> None:
    by_code: dict[str, set[tuple[int, str]]] = {}
    for _, status, type_, code in catalogue():
        by_code.setdefault(code, set()).add((status, type_))
    assert {code: answers for code, answers in by_code.items() if len(answers) > 1} == {}
    assert len(catalogue()) >= 25  # the core's, the pipeline's, the HTTP layer's and the ingress's


def test_one_mapping_builds_both_bodies_from_the_declaration() -> None:
    error = ModelNotFoundError("model 'x' is not served here")
    openai, kserve = error_response(error), error_response(error, kserve=True)
    assert openai.status_code == kserve.status_code == 404
    assert orjson.loads(openai.body) == {
        "error": {"message": "model 'x' is not served here", "type": "invalid_request_error", "code": "model_not_found"}
    }
    assert orjson.loads(kserve.body) == {"error": "model 'x' is not served here"}


def test_server_side_failures_keep_their_text_in_the_log() -> None:
    response = error_response(PackageError("/secret/path/model.onnx: sha256 mismatch"))
    assert response.status_code == 500
    assert orjson.loads(response.body)["error"]["message"] == "internal server error"
    overloaded = error_response(OverloadedError("4096 items are queued (limit 4096)"))
    assert (overloaded.status_code, overloaded.headers["retry-after"]) == (503, "1")
    assert orjson.loads(overloaded.body)["error"]["message"] == "server is overloaded; retry later"


def test_a_run_error_is_its_declared_answer_or_inference_failed() -> None:
    assert isinstance(run_error(OverloadedError("full")), OverloadedError)
    assert isinstance(run_error(DimensionsError("too wide")), DimensionsError)
    failed = run_error(RuntimeError("CUDA error: an illegal memory access"))
    assert isinstance(failed, InferenceFailedError) and failed.client_message == "inference failed"
    assert isinstance(run_error(PackageError("gone")), InferenceFailedError)  # a plain 500 is not the client's


def _haproxy_pages() -> list[tuple[int, str, str, bool]]:
    """(status, type, code, has Retry-After) of every JSON answer serving/haproxy-local writes."""
    text = HAPROXY_LOCAL.read_text().replace("\\\n", " ")
    pages = [
        (int(status), type_, code, "Retry-After" in rest)
        for status, type_, code, rest in re.findall(r'json_page "[^"]+" (\d{3}) "[^"]+" (\w+) (\w+) (.*)', text)
    ]
    inline = re.findall(r'return status (\d{3}) .*?type\\+": \\+"(\w+)\\+", \\+"code\\+": \\+"(\w+)', text)
    return pages + [(int(status), type_, code, False) for status, type_, code in inline]


def test_haproxy_pages_are_entries_of_the_catalogue() -> None:
    pages = _haproxy_pages()
    assert len(pages) == 10  # 8 error files, 405 for unknown methods, 404 on the health port
    kinds = {(status, type_, code): name for name, status, type_, code in catalogue()}
    missing = [page for page in pages if page[:3] not in kinds]
    assert missing == []
    by_name = {cls.__name__: cls for cls in _all_classes()}
    for status, type_, code, retry_after in pages:
        declared = by_name[kinds[(status, type_, code)]]
        assert ("Retry-After" in declared.headers) == retry_after, (status, code)


def _all_classes() -> list[type[OptiserveError]]:
    found, pending = [], [OptiserveError]
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    return found


@pytest.mark.parametrize("status", [413])
def test_too_many_inputs_is_the_schema_validation_type(status: int) -> None:
    from serving import api

    with pytest.raises(Exception, match="at most"):
        api.check_count(list(range(10**6)), "inputs")
    assert TooManyInputsError.status == status and TooManyInputsError.code == "too_many_inputs"
