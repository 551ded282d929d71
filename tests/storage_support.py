"""Looking into the test bucket of a :class:`SeaweedFS` store
(``benchmarks/loadbench/object_store.py``, which starts it) with an aiobotocore client."""

from __future__ import annotations

from typing import Any

from benchmarks.loadbench.object_store import BUCKET


async def object_bytes(s3: Any, key: str) -> bytes:
    """The whole object ``key`` of the test bucket."""
    answer = await s3.get_object(Bucket=BUCKET, Key=key)
    async with answer["Body"] as body:
        return bytes(await body.read())


async def object_keys(s3: Any, prefix: str) -> set[str]:
    """The keys under ``prefix`` in the test bucket."""
    answer = await s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"] for item in answer.get("Contents", [])}


async def uploaded_parts(s3: Any, key: str) -> list[int]:
    """Part numbers the store holds for unfinished multipart uploads of ``key``."""
    uploads = await s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key)
    numbers: list[int] = []
    for upload in uploads.get("Uploads", []):
        if upload["Key"] != key:
            continue
        parts = await s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"])
        numbers += [part["PartNumber"] for part in parts.get("Parts", [])]
    return sorted(numbers)
