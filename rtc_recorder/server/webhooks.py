"""Webhooks: every :class:`Notice` POSTed to each ``--webhook`` URL as JSON
``{type, timestamp, data}``, signed per the Standard Webhooks specification.

Deliveries to one URL keep the order of one session's notices (a room's, once rooms
come): a notice is retried, with exponential backoff, until it is delivered or
``--webhook-retry-seconds`` have passed, and the next one of the same session waits for
it. Different sessions never wait for each other. A retry carries the same
``webhook-id`` (receivers use it to drop duplicates) and a fresh timestamp and signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable

import aiohttp
from prometheus_client import CollectorRegistry, Counter
from standardwebhooks import Webhook

from .notices import Notice
from .recordings import utc_now
from .storage import Backoff

logger = logging.getLogger("rtc_recorder.server")

REQUEST_TIMEOUT = 10.0


def check_secret(secret: str) -> None:
    """``ValueError`` unless ``secret`` is a usable Standard Webhooks secret."""
    try:
        Webhook(secret)
    except Exception as exc:
        raise ValueError(
            f"--webhook-secret: not a Standard Webhooks secret (whsec_ then base64): {exc}"
        ) from None


class WebhookSender:
    """Delivers notices to ``urls``; subscribe :meth:`send` to the server's notices."""

    def __init__(
        self,
        urls: tuple[str, ...],
        secret: str,
        retry_seconds: float,
        registry: CollectorRegistry,
        backoff: Callable[[], Backoff] = lambda: Backoff(first=1.0, cap=60.0),
    ) -> None:
        self.urls = urls
        self.retry_seconds = retry_seconds
        self._signer = Webhook(secret)
        self._backoff = backoff
        self._queues: dict[tuple[str, str], deque[Notice]] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._http: aiohttp.ClientSession | None = None
        deliveries = Counter(
            "rtc_recorder_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retried (an attempt that "
            "failed and will be tried again), failed (given up)",
            ["outcome"],
            registry=registry,
        )
        self._delivered = deliveries.labels(outcome="delivered")
        self._retried = deliveries.labels(outcome="retried")
        self._failed = deliveries.labels(outcome="failed")

    def send(self, notice: Notice) -> None:
        """Queue ``notice`` for every URL (returns at once)."""
        for url in self.urls:
            key = (url, notice.order_key)
            self._queues.setdefault(key, deque()).append(notice)
            if key not in self._workers:
                self._workers[key] = asyncio.ensure_future(self._work(key))

    async def close(self, timeout: float) -> None:
        """Give queued deliveries up to ``timeout`` seconds, then drop the rest."""
        workers = list(self._workers.values())
        if workers:
            _, pending = await asyncio.wait(workers, timeout=timeout)
            for worker in pending:
                worker.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            undelivered = sum(len(queue) for queue in self._queues.values())
            if undelivered:
                logger.warning("webhooks not delivered at shutdown: %d", undelivered)
        if self._http is not None:
            await self._http.close()

    async def _work(self, key: tuple[str, str]) -> None:
        queue = self._queues[key]
        try:
            while queue:
                await self._deliver(key[0], queue[0])
                queue.popleft()
        finally:
            if not queue:
                del self._queues[key]
            del self._workers[key]

    async def _deliver(self, url: str, notice: Notice) -> None:
        body = json.dumps(notice.to_json(), separators=(",", ":"))
        message_id = "msg_" + secrets.token_hex(12)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_seconds
        backoff = self._backoff()
        while True:
            if await self._post(url, message_id, body):
                self._delivered.inc()
                return
            delay = backoff.next_delay()
            if loop.time() + delay > deadline:
                self._failed.inc()
                logger.warning(
                    "webhook given up",
                    extra={"fields": {"url": url, "type": notice.type, "id": message_id}},
                )
                return
            self._retried.inc()
            await asyncio.sleep(delay)

    async def _post(self, url: str, message_id: str, body: str) -> bool:
        """One attempt; whether the receiver took it (a 2xx answer)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        now = utc_now()
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(message_id, now, body),
        }
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._http.post(url, data=body.encode(), headers=headers) as response:
                return 200 <= response.status < 300
        return False
