"""The Ray Serve application's routes run in this process, without Ray: the replica class constructed as Serve
constructs it, its FastAPI app driven through httpx's ASGI transport on an event loop of its own.

Serve's ``@serve.ingress`` makes each route method take the replica instance through a FastAPI dependency that
reads ``serve.get_replica_context().servable_object``; here that one function of Ray's (the boundary) answers the
instance built below while the server is open. Everything else -- the gate, validation, batching, runtimes,
errors -- is the real code.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
from ray import serve

T = TypeVar("T")


class InProcessServer:
    """One replica's routes for ``package_dirs``, answering ``request(...)`` synchronously."""

    def __init__(self, package_dirs: list[Path], served_names: list[str | None] | None = None) -> None:
        from serving import app as app_module

        self.api = app_module.api
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="inprocess-app", daemon=True)
        self._thread.start()
        replica_class = _undecorated(app_module.InferenceService.func_or_class)
        self.replica = self._run(self._construct(replica_class, [str(d) for d in package_dirs], served_names))
        self._replica_context = serve.get_replica_context
        serve.get_replica_context = lambda: SimpleNamespace(servable_object=self.replica)  # type: ignore[assignment]
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.api), base_url="http://inprocess")

    @staticmethod
    async def _construct(replica_class: type, dirs: list[str], names: list[str | None] | None) -> Any:
        replica = replica_class(dirs, None, names)
        await replica.reconfigure({})  # Serve calls it before routing (loads, verifies, warms up)
        return replica

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._run(self._client.request(method, path, **kwargs))

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def close(self) -> None:
        serve.get_replica_context = self._replica_context  # type: ignore[assignment]
        self._run(self._client.aclose())
        for runner in [*self.replica.models.values(), *self.replica.canaries.values()]:
            self._run(_close(runner))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _close(runner: Any) -> None:
    runner.close()


def _undecorated(wrapper: type) -> type:
    """The class ``@serve.ingress`` wrapped (the wrapper's first base)."""
    return wrapper.__mro__[1]
