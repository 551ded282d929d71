"""Where recordings are kept: a folder (``file:DIR``) or an S3 bucket (``s3://BUCKET/PREFIX``).

The bucket is reached through aiobotocore: S3's multipart upload takes explicit part
numbers, so the first part (the one a finished recording patches in place) can be sent
last, and an upload id outlives the process, so an upload cut by a crash is resumed
instead of sent again. Every call here is one request; retrying is the caller's choice
(:class:`Backoff`).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3 refuses smaller parts (all but the last)

# Exceptions a store call may fail with: the store's own answers and the network's.
StoreError = (ClientError, BotoCoreError, OSError)


@dataclass(frozen=True)
class FolderLocation:
    """Recordings kept in a local folder."""

    folder: Path


@dataclass(frozen=True)
class BucketLocation:
    """Recordings kept in an S3 bucket, under ``prefix`` (empty, or ending with ``/``)."""

    bucket: str
    prefix: str

    def key(self, name: str) -> str:
        """The object key of ``name`` (a file, or ``folder/file``, of the spool)."""
        return self.prefix + name

    def url(self, name: str) -> str:
        """``s3://bucket/key`` of ``name``."""
        return f"s3://{self.bucket}/{self.key(name)}"


Location = FolderLocation | BucketLocation


def parse_storage(url: str) -> Location:
    """``file:DIR`` or ``s3://BUCKET[/PREFIX]``; ``ValueError`` with the reason otherwise."""
    if url.startswith("file:"):
        folder = url[len("file:") :]
        if folder.startswith("//"):
            folder = folder[2:]
        if not folder:
            raise ValueError("--storage file:DIR needs a folder")
        return FolderLocation(Path(folder))
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError("--storage s3://BUCKET[/PREFIX] needs a bucket")
        prefix = prefix.strip("/")
        return BucketLocation(bucket, prefix + "/" if prefix else "")
    if url.startswith(("gs://", "az://", "azure://", "abfs://")):
        raise ValueError(
            f"--storage {url}: only S3 is supported (for Google Cloud Storage, use its "
            "S3-compatible endpoint with s3:// and --s3-endpoint)"
        )
    raise ValueError(f"--storage {url!r}: expected file:DIR or s3://BUCKET[/PREFIX]")


class Backoff:
    """Exponential backoff: ``first`` seconds, doubling up to ``cap``, each delay spread
    by ±``jitter`` so that many uploads failing together do not retry together."""

    def __init__(
        self,
        first: float = 0.5,
        cap: float = 10.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        """The wait before the next attempt, after one more failure."""
        base = min(self.cap, self.first * 2.0**self.failures)
        self.failures += 1
        spread: float = self._rng.uniform(-self.jitter, self.jitter)
        return base * (1 + spread)

    def reset(self) -> None:
        """A success: the next failure starts from ``first`` again."""
        self.failures = 0


def is_missing(error: BaseException) -> bool:
    """Whether a store error says the object or upload does not exist."""
    if not isinstance(error, ClientError):
        return False
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NoSuchUpload", "NotFound")


@dataclass(frozen=True)
class StoredObject:
    """An object as a listing sees it."""

    key: str
    size: int
    modified: str  # ISO 8601


class Bucket:
    """One S3 client on the running event loop, scoped to a :class:`BucketLocation`."""

    def __init__(self, client: Any, location: BucketLocation) -> None:
        self._client = client
        self.location = location

    @property
    def name(self) -> str:
        """The bucket's name."""
        return self.location.bucket

    # -- multipart ------------------------------------------------------------------------

    async def create_multipart(self, name: str, content_type: str) -> str:
        """A new multipart upload of ``name``; its upload id."""
        answer = await self._client.create_multipart_upload(
            Bucket=self.name, Key=self.location.key(name), ContentType=content_type
        )
        return str(answer["UploadId"])

    async def put_part(self, name: str, upload: str, number: int, data: bytes) -> str:
        """Send part ``number`` (1-based; sending a number again replaces it); its ETag."""
        answer = await self._client.upload_part(
            Bucket=self.name,
            Key=self.location.key(name),
            UploadId=upload,
            PartNumber=number,
            Body=data,
        )
        return str(answer["ETag"])

    async def complete_multipart(self, name: str, upload: str, etags: list[str]) -> None:
        """Join parts 1..len(etags) into the object."""
        parts = [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]
        await self._client.complete_multipart_upload(
            Bucket=self.name,
            Key=self.location.key(name),
            UploadId=upload,
            MultipartUpload={"Parts": parts},
        )

    # -- whole objects ----------------------------------------------------------------------

    async def put(self, name: str, data: bytes, content_type: str) -> None:
        """Store ``data`` as the object ``name`` (one request)."""
        await self._client.put_object(
            Bucket=self.name, Key=self.location.key(name), Body=data, ContentType=content_type
        )

    async def size(self, name: str) -> int | None:
        """The object's size, or None when there is no such object."""
        try:
            answer = await self._client.head_object(Bucket=self.name, Key=self.location.key(name))
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        return int(answer["ContentLength"])

    async def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive; None: to the end) of an object."""
        chunks = [chunk async for chunk in self.stream(name, start, end)]
        return b"".join(chunks)

    async def stream(
        self, name: str, start: int = 0, end: int | None = None, chunk: int = 256 * 1024
    ) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) of an object, as they arrive."""
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        answer = await self._client.get_object(
            Bucket=self.name, Key=self.location.key(name), **extra
        )
        async with answer["Body"] as body:
            while data := await body.read(chunk):
                yield data

    async def list(self) -> list[StoredObject]:
        """Every object under the prefix (keys relative to it)."""
        prefix = self.location.prefix
        paginator = self._client.get_paginator("list_objects_v2")
        found = []
        async for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
            for item in page.get("Contents", []):
                key = str(item["Key"])[len(prefix) :]
                found.append(StoredObject(key, int(item["Size"]), item["LastModified"].isoformat()))
        return found

    async def delete(self, name: str) -> None:
        """Remove the object ``name`` (removing one that is not there is no error)."""
        await self._client.delete_object(Bucket=self.name, Key=self.location.key(name))


@asynccontextmanager
async def open_bucket(location: BucketLocation, endpoint: str | None) -> AsyncIterator[Bucket]:
    """A :class:`Bucket` on the running loop; credentials come the standard AWS way."""
    config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"total_max_attempts": 1},  # the callers retry, with their own backoff
        s3={"addressing_style": "path"} if endpoint else None,
    )
    session = get_session()
    async with session.create_client("s3", endpoint_url=endpoint, config=config) as client:
        yield Bucket(client, location)
