"""
The S3 side of :mod:`airflow_provider_imggen.transfers.image_generation_to_s3`.

A separate module because importing the amazon provider's S3Hook pulls in boto3: the operator module
imports this one inside ``execute`` only, keeping DAG parsing cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook

_UPLOAD_ARGS: ContextVar[dict[str, Any] | None] = ContextVar("imggen_s3_upload_args", default=None)


class ImageS3Hook(S3Hook):
    """
    An S3Hook whose upload ``ExtraArgs`` can be extended for one upload (an image's Metadata, ContentType).

    S3Hook takes ``ExtraArgs`` per hook (``extra_args``), but every image needs its own metadata. A hook
    per image would build a boto3 session and client per image (about 50 ms of CPU each, under the GIL);
    this hook shares one client (boto3 clients are thread-safe) across concurrent uploads, each adding its
    arguments through a context variable, which is per thread.
    """

    @property
    def extra_args(self) -> dict[str, Any]:
        return {**super().extra_args, **(_UPLOAD_ARGS.get() or {})}

    @contextmanager
    def upload_args(self, args: dict[str, Any]) -> Iterator[None]:
        """Add ``args`` to the ``ExtraArgs`` of the uploads this thread makes inside the block."""
        token = _UPLOAD_ARGS.set(args)
        try:
            yield
        finally:
            _UPLOAD_ARGS.reset(token)
