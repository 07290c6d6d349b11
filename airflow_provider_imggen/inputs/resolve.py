"""
Reading a request's input images on the worker, before anything is billed: each is streamed once, in 1 MiB
pieces, through the transfer's structural check (:class:`~airflow_provider_imggen.transfers.image_check.
StreamingImageCheck`: complete PNG, JPEG or WebP, its dimensions, its sha256), checked against the model's
input limits, and given the form the service is sent:

- small images (at most :data:`INLINE_MAX_BYTES`) inline, as a ``data:`` URI of the very bytes checked;
- larger S3 objects as a presigned GET URL, valid :data:`PRESIGNED_SECONDS` and pinned to the version read
  when the bucket keeps versions;
- larger https inputs as their own URL (the service fetches them; the sha256 recorded is what the worker
  read);
- larger inputs from other stores are refused: only a URL lets the service fetch them.

Memory stays bounded by the inline limit whatever the input's size: nothing is kept of a larger one but
its digest. Nothing of an input reaches XCom or the logs but its record (masked URI, sha256, size, type,
dimensions).
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import ImageGenerationInputError, ImageGenerationValidationError
from airflow_provider_imggen.inputs.references import InputImage, s3_location, shown_uri
from airflow_provider_imggen.model_table import INPUT_FORMATS, spec_of

if TYPE_CHECKING:
    from airflow_provider_imggen.model_table import ModelSpec
    from airflow_provider_imggen.request import GenerationRequest

CHUNK_BYTES = 1024 * 1024
# Sent inline (base64) up to this size: the documentation calls data URIs "for small images", and up to
# 9 inputs of a wan2.7-image request must fit one JSON body.
INLINE_MAX_BYTES = 1024 * 1024
# How long a presigned input URL stays valid: the synchronous endpoint fetches at once, a task may wait in
# the service's queue first.
PRESIGNED_SECONDS = 3600
# A model the table does not know: the largest input read (the service decides the rest).
GENERIC_MAX_INPUT_BYTES = 64 * 1024 * 1024
READ_SECONDS = 120.0


@dataclasses.dataclass
class _Read:
    """
    What reading one input gave: its checked record, its bytes when small enough to send inline, and
    whether it declares transparency.
    """

    image: InputImage
    inline: bytes | None
    alpha: bool = False


def resolve_input_images(
    request: GenerationRequest, *, aws_conn_id: str | None, imggen_conn_id: str | None, log: Any = None
) -> GenerationRequest:
    """
    ``request`` with every input image read, checked and ready to send (see the module).

    :param aws_conn_id: the aws connection reading ``s3://`` inputs and presigning their URLs
    :param imggen_conn_id: the connection whose result-URL policy (``result_hosts``,
        ``allow_private_result_hosts``) https inputs must pass, as result URLs do
    :raises ImageGenerationValidationError: an input the model does not take (format, bytes, dimensions),
        or whose bytes no longer match the sha256 its XCom record carries (nothing was sent)
    :raises ImageGenerationInputError: an input that could not be read (Airflow may retry: nothing was sent)
    """
    if not request.images or all(image.resolved for image in request.images):
        return request
    spec = spec_of(request.model)
    started = time.monotonic()
    resolved = []
    clients: dict[str | None, Any] = {}  # one S3 client per connection: each costs a cold worker 15 MB
    for position, image in enumerate(request.images):
        where = f"images[{position}]"
        read = _read(image, where, spec, clients, aws_conn_id=aws_conn_id, imggen_conn_id=imggen_conn_id)
        checked = _checked(read, where, spec, expected=image.sha256)
        resolved.append(dataclasses.replace(checked, wire=_wire(read, where)))
    _check_boxes(request.extra_body.get("bbox_list"), resolved)
    if log is not None:
        log.info(
            "Read %d input image(s) in %.1f s: %s",
            len(resolved),
            time.monotonic() - started,
            ", ".join(
                f"{image.content_type} {image.width}x{image.height} {image.bytes} B" for image in resolved
            ),
        )
    return dataclasses.replace(request, images=tuple(resolved))


def _check_boxes(boxes: object, images: list[InputImage]) -> None:
    """
    wan2.7-image's targeted edits (``extra_body={"bbox_list": ...}``, the Wan image editing guide): one list
    per input image, in order, of ``[x1, y1, x2, y2]`` boxes in that image's pixels, ``[]`` for an image
    without. Checked once the inputs' dimensions are known, before anything is billed.
    """
    if boxes is None:
        return
    if not isinstance(boxes, list) or len(boxes) != len(images):
        raise ImageGenerationValidationError(
            "extra_body['bbox_list']",
            boxes,
            f"expected one list of [x1, y1, x2, y2] boxes per input image ({len(images)}), [] for an image "
            "without",
        )
    for position, (entry, image) in enumerate(zip(boxes, images, strict=True)):
        where = f"extra_body['bbox_list'][{position}]"
        if not isinstance(entry, list):
            raise ImageGenerationValidationError(where, entry, "expected a list of [x1, y1, x2, y2] boxes")
        for box in entry:
            numbers = isinstance(box, list) and len(box) == 4
            if not numbers or not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
                raise ImageGenerationValidationError(where, box, "expected [x1, y1, x2, y2] in whole pixels")
            x1, y1, x2, y2 = box
            assert image.width is not None and image.height is not None
            if not (0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height):
                raise ImageGenerationValidationError(
                    where,
                    box,
                    f"input image {position} is {image.width}x{image.height}: expected x1 < x2 and y1 < y2 "
                    "inside it",
                )


def _max_bytes(spec: ModelSpec | None) -> int:
    return spec.max_input_bytes if spec is not None else GENERIC_MAX_INPUT_BYTES


def _read(
    image: InputImage,
    where: str,
    spec: ModelSpec | None,
    clients: dict[str | None, Any],
    *,
    aws_conn_id: str | None,
    imggen_conn_id: str | None,
) -> _Read:
    limit = _max_bytes(spec)
    if image.kind == "s3":
        return _read_s3(image, where, limit, clients, image.conn_id or aws_conn_id)
    if image.kind == "url":
        return _read_url(image, where, limit, imggen_conn_id)
    return _read_fsspec(image, where, limit)


def _stream(
    image: InputImage, where: str, chunks: Iterable[bytes], limit: int, known_size: int | None
) -> _Read:
    """Check and hash ``chunks`` as they come; keep them only while they could still be sent inline."""
    from airflow_provider_imggen.transfers.image_check import ImageCheckError, StreamingImageCheck

    if known_size is not None and known_size > limit:
        _too_large(image, where, known_size, limit)
    kept: list[bytes] | None = [] if known_size is None or known_size <= INLINE_MAX_BYTES else None
    total = 0
    with StreamingImageCheck() as check:
        try:
            for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    _too_large(image, where, total, limit, at_least=True)
                if kept is not None and total <= INLINE_MAX_BYTES:
                    kept.append(chunk)
                else:
                    kept = None
                check.feed(chunk)
            info, sha256 = check.finish()
        except ImageCheckError as error:
            raise ImageGenerationValidationError(
                where, shown_uri(image.uri), f"not a complete PNG, JPEG or WebP image: {error}"
            ) from None
    read = dataclasses.replace(
        image,
        sha256=sha256,
        bytes=total,
        content_type=info.content_type,
        width=info.width,
        height=info.height,
    )
    return _Read(read, b"".join(kept) if kept is not None else None, info.alpha)


def _too_large(image: InputImage, where: str, size: int, limit: int, *, at_least: bool = False) -> None:
    raise ImageGenerationValidationError(
        where,
        shown_uri(image.uri),
        f"{'more than ' if at_least else ''}{size} bytes; the model takes input images of at most "
        f"{limit} bytes",
    )


def _read_s3(
    image: InputImage, where: str, limit: int, clients: dict[str | None, Any], aws_conn_id: str | None
) -> _Read:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = s3_location(image.uri)
    if aws_conn_id not in clients:
        clients[aws_conn_id] = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    client = clients[aws_conn_id]
    try:
        head = _head(client, bucket, key)
        if head is None:
            raise ImageGenerationInputError(
                f"Input {where} ({image.uri}) does not exist in S3. Nothing was sent"
            )
        size = head.get("ContentLength")
        if isinstance(size, int) and size > limit:
            _too_large(image, where, size, limit)  # refused without reading a byte
        version = head.get("VersionId")
        pinned = {"VersionId": version} if version and version != "null" else {}
        # The hook's client, not its boto3 resource: a resource costs a cold worker another 13 MB.
        body = client.get_object(Bucket=bucket, Key=key, **pinned)["Body"]
        try:
            read = _stream(image, where, body.iter_chunks(CHUNK_BYTES), limit, size)
        finally:
            body.close()
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", "?"))
        raise ImageGenerationInputError(
            f"Input {where} ({image.uri}) could not be read from S3: {code}. Nothing was sent"
        ) from None
    except BotoCoreError as error:
        raise ImageGenerationInputError(
            f"Input {where} ({image.uri}) could not be read from S3 ({type(error).__name__}). "
            "Nothing was sent"
        ) from None
    return _S3Read(read.image, read.inline, read.alpha, client, pinned)


@dataclasses.dataclass
class _S3Read(_Read):
    """
    An S3 input: the client that read it presigns its URL, for the version read when the bucket keeps
    versions.
    """

    client: Any = None
    version: dict[str, str] = dataclasses.field(default_factory=dict)


def _head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return dict(client.head_object(Bucket=bucket, Key=key))
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _read_url(image: InputImage, where: str, limit: int, imggen_conn_id: str | None) -> _Read:
    from airflow_provider_imggen.exceptions import ImageResultUrlRefusedError
    from airflow_provider_imggen.http_client import user_agent
    from airflow_provider_imggen.retry_policy import TransientAPIError
    from airflow_provider_imggen.transfers.deadline import DeadlineExceededError
    from airflow_provider_imggen.transfers.fetch import fetch
    from airflow_provider_imggen.transfers.url_policy import ResultUrlPolicy

    policy = ResultUrlPolicy.from_connection(imggen_conn_id)
    deadline = time.monotonic() + READ_SECONDS
    try:
        with fetch(
            policy, image.uri, deadline=deadline, user_agent=user_agent(), chunk_bytes=CHUNK_BYTES
        ) as answer:
            if answer.status != 200:
                raise ImageGenerationInputError(
                    f"Input {where} ({shown_uri(image.uri)}) answered HTTP {answer.status}. Nothing was sent"
                )
            return _stream(image, where, answer.chunks, limit, answer.content_length)
    except ImageResultUrlRefusedError as error:
        raise ImageGenerationValidationError(
            where, shown_uri(image.uri), f"refused by the connection's result-URL policy ({error.rule})"
        ) from None
    except (TransientAPIError, DeadlineExceededError) as error:
        raise ImageGenerationInputError(
            f"Input {where} ({shown_uri(image.uri)}) could not be read ({type(error).__name__}). "
            "Nothing was sent"
        ) from None


def _read_fsspec(image: InputImage, where: str, limit: int) -> _Read:
    from airflow.sdk import ObjectStoragePath

    try:
        path = ObjectStoragePath(image.uri, conn_id=image.conn_id)
    except (ValueError, ImportError) as error:  # a protocol fsspec does not know, or whose package is missing
        raise ImageGenerationValidationError(
            where, shown_uri(image.uri), f"no object store reads this URI here ({error})"
        ) from None
    try:
        with path.open("rb") as file:
            return _stream(image, where, _file_chunks(file), limit, None)
    except OSError as error:
        raise ImageGenerationInputError(
            f"Input {where} ({shown_uri(image.uri)}) could not be read ({type(error).__name__}). "
            "Nothing was sent"
        ) from None


def _file_chunks(file: Any) -> Iterator[bytes]:
    while chunk := file.read(CHUNK_BYTES):
        yield chunk


def _checked(read: _Read, where: str, spec: ModelSpec | None, *, expected: str | None) -> InputImage:
    """The model's input limits, and the sha256 a stored image's record promised."""
    image = read.image
    if spec is not None and read.alpha and not spec.input_alpha:
        raise ImageGenerationValidationError(
            where,
            shown_uri(image.uri),
            f"it has an alpha channel (transparency), which {spec.name} does not take: flatten it first",
        )
    if expected is not None and image.sha256 != expected:
        raise ImageGenerationValidationError(
            where,
            shown_uri(image.uri),
            "its bytes no longer match the sha256 recorded for it, by its stored image's XCom record or by "
            "an earlier try of this task (which may have paid for an edit of those bytes): the object was "
            "replaced, or the XCom edited. Nothing was sent",
        )
    if image.content_type not in INPUT_FORMATS:
        raise ImageGenerationValidationError(
            where, shown_uri(image.uri), f"{image.content_type}: expected one of {', '.join(INPUT_FORMATS)}"
        )
    if spec is not None:
        assert image.width is not None and image.height is not None
        low, high = spec.min_input_side, spec.max_input_side
        if not (low <= image.width <= high and low <= image.height <= high):
            raise ImageGenerationValidationError(
                where,
                shown_uri(image.uri),
                f"{image.width}x{image.height}: {spec.name} takes input images with each side "
                f"{low}-{high} px",
            )
    return image


def _wire(read: _Read, where: str) -> str:
    image = read.image
    if read.inline is not None:
        encoded = base64.b64encode(read.inline).decode("ascii")
        return f"data:{image.content_type};base64,{encoded}"
    if image.kind == "url":
        from airflow_provider_imggen.sealed_urls import register_secrets

        register_secrets(image.uri)  # its query may be a credential: never in a log line
        return image.uri
    if isinstance(read, _S3Read):
        return _presigned(read)
    raise ImageGenerationValidationError(
        where,
        shown_uri(image.uri),
        f"{image.bytes} bytes: inputs larger than {INLINE_MAX_BYTES} bytes must be in S3 or behind an https "
        "URL, which the service fetches itself",
    )


def _presigned(read: _S3Read) -> str:
    from airflow_provider_imggen.sealed_urls import register_secrets

    bucket, key = s3_location(read.image.uri)
    url = read.client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key, **read.version}, ExpiresIn=PRESIGNED_SECONDS
    )
    register_secrets(url)  # a signed URL is a credential: any log line quoting it is redacted
    return str(url)
