"""
The S3 side of the transfer: an S3Hook with per-upload ``ExtraArgs`` and atomic no-overwrite writes.

A separate module because importing the amazon provider's S3Hook pulls in boto3: the operator imports this
one inside ``execute`` only, keeping DAG parsing cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook

_UPLOAD_ARGS: ContextVar[dict[str, Any] | None] = ContextVar("imggen_s3_upload_args", default=None)
# The S3 operations that create an object from an upload: the conditional header goes on these.
_WRITES = ("PutObject", "CompleteMultipartUpload")
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


class ImageS3Hook(S3Hook):
    """
    An S3Hook whose upload ``ExtraArgs`` can be extended for one upload (an image's Metadata, ContentType),
    and whose uploads can be made conditional (``If-None-Match: *``).

    S3Hook takes ``ExtraArgs`` per hook (``extra_args``), but every image needs its own metadata. A hook
    per image would build a boto3 session and client per image (about 50 ms of CPU each, under the GIL);
    this hook shares one client (boto3 clients are thread-safe) across concurrent uploads, each adding its
    arguments through a context variable, which is per thread.

    boto3's managed upload (``upload_file``) does not accept ``IfNoneMatch`` among its ``ExtraArgs``; with
    ``if_none_match=True`` the hook's client adds ``IfNoneMatch="*"`` to every ``PutObject`` and
    ``CompleteMultipartUpload`` it sends, so S3 creates the object only if the key is free, atomically:
    of two concurrent writers exactly one wins, the other gets ``PreconditionFailed``.

    :param if_none_match: make every object-creating upload of this hook conditional
    :param caller: the operator named in the client's user agent (AwsBaseHook looks for an ``execute``
        frame on the stack, which a client built in a thread of its own does not have)
    """

    def __init__(
        self, *args: Any, if_none_match: bool = False, caller: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.if_none_match = if_none_match
        self.caller = caller
        self._conditional_registered = False

    def _get_caller(self, target_function_name: str = "execute") -> str:
        return self.caller or super()._get_caller(target_function_name)

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

    def get_conn(self) -> Any:
        client = super().get_conn()
        if self.if_none_match and not self._conditional_registered:
            for operation in _WRITES:
                client.meta.events.register(
                    f"before-parameter-build.s3.{operation}",
                    _add_if_none_match,
                    unique_id=f"imggen-if-none-match-{operation}",
                )
            self._conditional_registered = True
        return client


def _add_if_none_match(params: dict[str, Any], **kwargs: Any) -> None:
    params.setdefault("IfNoneMatch", "*")


def is_conflict(error: BaseException) -> bool:
    """Whether an upload error is S3 refusing a conditional write (the key was taken)."""
    from botocore.exceptions import ClientError

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ClientError) and seen.response.get("Error", {}).get("Code") in CONFLICT_CODES:
            return True
        seen = seen.__cause__ or seen.__context__
    # boto3's S3UploadFailedError keeps only the text of the ClientError it wraps.
    return any(f"({code})" in str(error) for code in CONFLICT_CODES)
