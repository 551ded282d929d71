"""Webhooks as a receiver sees them: every delivery signed per Standard Webhooks (checked
with the standardwebhooks library), retried through failures, in order per session."""

from __future__ import annotations

import datetime

from prometheus_client import CollectorRegistry

from benchmarks.loadbench.object_store import WEBHOOK_SECRET, webhook_receiver
from rtc_recorder.server.notices import Notice
from rtc_recorder.server.storage import Backoff
from rtc_recorder.server.webhooks import WebhookSender


def quick_backoff() -> Backoff:
    return Backoff(first=0.05, cap=0.2)


def sender_to(url: str, registry: CollectorRegistry, retry_seconds: float) -> WebhookSender:
    return WebhookSender((url,), WEBHOOK_SECRET, retry_seconds, registry, quick_backoff)


def deliveries(registry: CollectorRegistry, outcome: str) -> float | None:
    return registry.get_sample_value("rtc_recorder_webhook_deliveries_total", {"outcome": outcome})


async def test_deliveries_are_signed_retried_through_failures_and_in_order_per_session() -> None:
    notices = [
        Notice("session.started", {"session": "a"}),
        Notice("recording.started", {"session": "a", "name": "a-1.webm"}),
        Notice("session.started", {"session": "b"}),
        Notice("recording.paused", {"session": "a", "name": "a-1.webm"}),
        Notice("recording.stopped", {"session": "a", "name": "a-1.webm", "duration": 3.5}),
        Notice("session.ended", {"session": "b", "reason": "hang-up"}),
    ]
    registry = CollectorRegistry()
    async with webhook_receiver(fail_first=3) as hooks:
        sender = sender_to(hooks.url, registry, 30)
        for notice in notices:
            sender.send(notice)
        await hooks.until(lambda got: len(got) == len(notices), 15, "every notice")
        await sender.close(1)
    for session in ("a", "b"):
        expected = [n.to_json() for n in notices if n.data["session"] == session]
        assert [p for p in hooks.accepted if p["data"]["session"] == session] == expected
    refused = [delivery for delivery in hooks.deliveries if not delivery.accepted]
    assert len(refused) == 3
    assert all(delivery.payload is not None for delivery in refused)  # signed as well
    accepted_ids = [delivery.id for delivery in hooks.deliveries if delivery.accepted]
    assert len(set(accepted_ids)) == len(notices)
    assert {delivery.id for delivery in refused} <= set(accepted_ids)  # a retry keeps its id
    assert deliveries(registry, "delivered") == len(notices)
    assert deliveries(registry, "retried") == 3
    assert deliveries(registry, "failed") == 0


async def test_a_payload_is_type_timestamp_and_data() -> None:
    at = datetime.datetime(2026, 12, 1, 10, 15, 0, 250_000, tzinfo=datetime.UTC)
    notice = Notice("recording.uploaded", {"name": "x.webm", "size": 10}, at)
    registry = CollectorRegistry()
    async with webhook_receiver() as hooks:
        sender = sender_to(hooks.url, registry, 30)
        sender.send(notice)
        await hooks.until(lambda got: len(got) == 1, 10, "the notice")
        await sender.close(1)
    assert hooks.accepted == [
        {
            "type": "recording.uploaded",
            "timestamp": "2026-12-01T10:15:00.250Z",
            "data": {"name": "x.webm", "size": 10},
        }
    ]


async def test_a_delivery_is_given_up_after_the_retry_window() -> None:
    registry = CollectorRegistry()
    async with webhook_receiver(fail_first=1_000_000) as hooks:
        sender = sender_to(hooks.url, registry, 0.5)
        sender.send(Notice("session.started", {"session": "a"}))
        sender.send(Notice("session.ended", {"session": "a"}))
        await sender.close(10)
    assert deliveries(registry, "failed") == 2
    assert deliveries(registry, "delivered") == 0
    retried = deliveries(registry, "retried")
    assert retried is not None and retried >= 2
    assert len(hooks.deliveries) == retried + 2
