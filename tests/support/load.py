"""A small closed-loop HTTP load for fault tests: N workers post embeddings until stopped, recording statuses."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    started: float
    finished: float
    status: int  # HTTP status, or 0 when the connection itself failed


@dataclass
class ClosedLoopLoad:
    url: str
    texts: list[str]
    workers: int = 8
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> ClosedLoopLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def in_flight_at(self, moment: float) -> int:
        return sum(1 for o in self.outcomes if o.started <= moment <= o.finished)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            await asyncio.gather(*(self._worker(client, w) for w in range(self.workers)))

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        i = worker
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = (
                    await client.post(f"{self.url}/v1/embeddings", json={"input": self.texts[i % len(self.texts)]})
                ).status_code
            except httpx.HTTPError:
                status = 0
            self.outcomes.append(Outcome(started, time.monotonic(), status))
            i += self.workers


def post_concurrently(url: str, bodies: list[dict], headers: dict[str, str] | None = None) -> list[httpx.Response]:
    """POST every body to ``url`` at once; the responses in order."""

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(await asyncio.gather(*(client.post(url, json=b, headers=headers) for b in bodies)))

    return asyncio.run(fire())
