"""An S3-protocol server on loopback for tests: moto's server mode (real HTTP, signed requests), so the code
under test talks to it through boto3/s3fs exactly as to AWS or MinIO; never a mock of boto3."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
from collections.abc import Iterator

from arctic_pretrain.common.net import free_port

# the environment a client process needs for it: static credentials, no user files, no instance metadata
CLIENT_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
              "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
              "AWS_EC2_METADATA_DISABLED": "true"}
CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL")


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port) while the block runs; yields its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in a failing test's log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def client(endpoint: str):
    """A boto3 S3 client of that server, with CLIENT_ENV's credentials."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CLIENT_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CLIENT_ENV["AWS_SECRET_ACCESS_KEY"],
                        region_name=CLIENT_ENV["AWS_DEFAULT_REGION"])


def blob_id(data: bytes) -> str:
    """A Software Heritage content id (SHA-1 of the bytes, as The Stack v2's blob_id)."""
    return hashlib.sha1(data).hexdigest()


def put_blob(s3, data: bytes, bucket: str = "softwareheritage", gzipped: bool = True) -> str:
    """Store a blob as Software Heritage does (s3://softwareheritage/content/<blob_id>, gzip); its id."""
    key = blob_id(data)
    s3.put_object(Bucket=bucket, Key=f"content/{key}", Body=gzip.compress(data) if gzipped else data)
    return key
