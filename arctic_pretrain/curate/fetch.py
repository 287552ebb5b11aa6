"""Blob contents from an S3-compatible store (The Stack v2: Software Heritage's bucket, gzip-compressed).

One boto3 client per read task, shared by a thread pool (boto3 clients are thread-safe; sessions are not);
``ordered_map`` keeps the records' order, so the dedup stages still keep the first copy in input order.
Every failure is classified (``missing_blob``, ``corrupt_gzip``, ``fetch_error``) for the caller to count;
a task whose first ``fail_after`` fetches all fail stops with the reasons and the keys to check, because a
wrong bucket or endpoint would otherwise count every blob of the corpus as missing, for hours.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from arctic_pretrain.common.config import ConfigError
from arctic_pretrain.curate.config import FetchConfig

T = TypeVar("T")
R = TypeVar("R")

# S3 error codes of a blob that is not there (GetObject answers NoSuchKey; a HEAD-style 404 says "404")
_MISSING = {"NoSuchKey", "404", "NotFound"}
# codes that no retry and no other blob can fix: stop at once, naming the keys
# (AccessDenied is not among them: S3 answers it for a missing key to a caller without s3:ListBucket)
_FATAL = {"NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
          "AllAccessDisabled"}


class ReadAbort(ConfigError):
    """Reading cannot go on (a dataset without content, a store that answers nothing): not retried."""


@dataclass
class Fetched:
    data: bytes | None
    reason: str | None = None  # missing_blob | corrupt_gzip | fetch_error
    detail: str = ""


def _settings(c: FetchConfig) -> str:
    return (f"read.fetch.endpoint_url={c.endpoint_url!r} (None: AWS_ENDPOINT_URL or AWS), "
            f"read.fetch.bucket={c.bucket!r}, read.fetch.key_template={c.key_template!r}, "
            f"read.fetch.unsigned={c.unsigned}, read.fetch.profile={c.profile!r}")


class BlobFetcher:
    """``fetch(blob_id) -> Fetched``, thread-safe; the client is built on first use in the worker process
    (a pickled pipeline step must not carry one)."""

    def __init__(self, cfg: FetchConfig, max_bytes: int) -> None:
        self.cfg, self.max_bytes = cfg, max_bytes
        self._client: Any = None
        self.ok, self.failed = 0, Counter()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config

            c = self.cfg
            config = Config(retries={"max_attempts": c.retries + 1, "mode": "standard"},
                            connect_timeout=c.timeout_s, read_timeout=c.timeout_s,
                            max_pool_connections=c.threads, signature_version=UNSIGNED if c.unsigned else None)
            session = boto3.session.Session(profile_name=c.profile, region_name=c.region)
            self._client = session.client("s3", endpoint_url=c.endpoint_url, config=config)
        return self._client

    def key(self, blob_id: str) -> str:
        return self.cfg.key_template.format(blob_id=blob_id)

    def fetch(self, blob_id: str) -> Fetched:
        """One blob's bytes, decompressed, or why not. Only credential and bucket errors raise."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
            ProfileNotFound,
        )

        c, key = self.cfg, self.key(blob_id)
        raw = None
        for attempt in range(c.retries + 1):  # botocore retries the request; a broken body read is ours
            try:
                body = self.client().get_object(Bucket=c.bucket, Key=key)["Body"]
                raw = body.read()
                break
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                if code in _MISSING:
                    return Fetched(None, "missing_blob", key)
                if code in _FATAL:
                    raise ReadAbort(f"s3://{c.bucket}/{key}: {code} ({err}); check {_settings(c)}") from err
                return Fetched(None, "fetch_error", f"{key}: {code or err}")
            except (NoCredentialsError, PartialCredentialsError, ProfileNotFound) as err:
                raise ReadAbort(f"s3://{c.bucket}/{key}: {err}; give credentials the way boto3 finds them "
                                f"(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials, "
                                f"an instance role), or set read.fetch.unsigned=true for a public bucket; "
                                f"{_settings(c)}") from err
            except (BotoCoreError, OSError) as err:  # connection errors after botocore's retries, broken bodies
                if attempt == c.retries:
                    return Fetched(None, "fetch_error", f"{key}: {err!r}")
        if c.compression == "none":
            return Fetched(raw[: self.max_bytes + 1])
        try:
            # read at most one byte past the limit: a gzip bomb cannot fill memory, and too_large still shows
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
                return Fetched(fh.read(self.max_bytes + 1))
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
            return Fetched(None, "corrupt_gzip", f"{key}: {err}")

    def record(self, result: Fetched) -> None:
        """Count a result (in the caller's thread); stop when the task's first fetches all failed."""
        if result.data is not None:
            self.ok += 1
            return
        self.failed[result.reason] += 1
        if self.ok == 0 and sum(self.failed.values()) >= self.cfg.fail_after:
            raise ReadAbort(f"the first {self.cfg.fail_after} blob fetches of this task all failed "
                            f"({dict(self.failed)}; last: {result.detail}); check {_settings(self.cfg)}")


def ordered_map(fn: Callable[[T], R], items: Iterable[tuple[T | None, Any]], threads: int,
                window: int) -> Iterator[tuple[R | None, Any]]:
    """(fn(job), payload) for each (job, payload) in input order, with at most ``window`` jobs in flight
    on ``threads`` threads; a ``None`` job passes its payload through (in order) without a call."""
    pending: deque[tuple[Future | None, Any]] = deque()
    with ThreadPoolExecutor(threads) as pool:
        try:
            for job, payload in items:
                pending.append((pool.submit(fn, job) if job is not None else None, payload))
                while len(pending) > window or (pending and pending[0][0] is None):
                    fut, pay = pending.popleft()
                    yield (fut.result() if fut is not None else None), pay
            while pending:
                fut, pay = pending.popleft()
                yield (fut.result() if fut is not None else None), pay
        finally:
            for fut, _ in pending:
                if fut is not None:
                    fut.cancel()
