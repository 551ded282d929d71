"""A publisher in a process of its own, for tests that kill it without a goodbye.

    python -m tests.publish_process BASE_URL [--audio-only]

Publishes synthetic camera and microphone tracks through ``BASE_URL/offer``, prints the
session id once connected, then sends media until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import aioice.ice

from .server_support import publish


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--audio-only", action="store_true")
    args = parser.parse_args()
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []
    async with aiohttp.ClientSession(args.base) as http:
        publisher = await publish(http, video=not args.audio_only)
        print(publisher.session, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
