"""
What the wire modules share in reading an answer that may have been billed: a result URL checked before it
is trusted, an item or a whole answer that cannot be read turned into the provider's own terms (a failed
image; :class:`ImageGenerationMalformedResponseError`), never into an exception Airflow would retry (a retry
pays again), and the count of images beyond the ``n`` asked for.

Signed result URLs are credentials: no message built here quotes one, nor the exception a parser raised
about one (``ValueError: Invalid IPv6 URL`` is safe, but a parser's message may quote what it read).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from airflow_provider_imggen.exceptions import ImageGenerationMalformedResponseError, billed_note
from airflow_provider_imggen.results import MALFORMED_ITEM, FailedImage, GeneratedImage
from airflow_provider_imggen.utils import url_expiry

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_imggen.request import GenerationRequest

# The most images delivered from one answer: the largest documented count is 12 (wan2.7-image's sequential
# sets); beyond this an answer is hostile, and its images are counted, not delivered (the XCom stays small).
MAX_DELIVERED_IMAGES = 64


def url_problem(url: object, field: str) -> str | None:
    """Why ``url`` is not a result URL the provider can hand on (None when it is); never quotes it."""
    if not isinstance(url, str):
        return f"'{field}' is a {type(url).__name__}, not a string"
    if not url.startswith(("https://", "http://")):
        return f"'{field}' is not an http(s) URL"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return f"'{field}' cannot be parsed as a URL (not shown: a signed URL is a credential)"
    if not host:
        return f"'{field}' names no host"
    return None


def expiry_of(url: str) -> datetime | None:
    """When a signed URL stops working, if it says: None rather than an error for any odd value."""
    try:
        return url_expiry(url)
    except (ValueError, OverflowError, OSError):
        return None


def unreadable_item(index: int, error: BaseException) -> FailedImage:
    """An item the parser failed on (a bug, or a value deeper than Python recurses): a failed image."""
    return FailedImage(index, MALFORMED_ITEM, f"the item could not be read ({type(error).__name__})")


def unreadable_billed_answer(
    error: BaseException, *, model: str, images: int, request_id: str | None, what: str
) -> ImageGenerationMalformedResponseError:
    """
    The error for a billed answer the parser failed on: not retried (by the hook or by Airflow), naming
    what may have been billed and the request id to find the charge. The exception's own message is left
    out: it may quote the answer.
    """
    return ImageGenerationMalformedResponseError(
        f"The API answered 200 to {what} with a body the provider could not read ({type(error).__name__}"
        f"{'' if request_id is None else f'; request id {request_id}'}). {billed_note(model, images)}",
        status=200,
        request_id=request_id,
        model=model,
        images_at_risk=images,
    )


def guarded_failure(
    error: BaseException, request: GenerationRequest, request_id: str | None, what: str
) -> ImageGenerationMalformedResponseError:
    """:func:`unreadable_billed_answer` for a request's answer."""
    return unreadable_billed_answer(
        error, model=request.model, images=request.n, request_id=request_id, what=what
    )


def extra_images(items: list[object], n: int) -> tuple[list[object], str | None]:
    """
    The items to read from an answer that may carry more than the ``n`` asked for, and the warning then.

    Every item is read: a relay that drops ``n`` (new-api with a ``parameters`` object, api-notes §7) gets
    the model's default count, and bills it, so the images beyond ``n`` were most likely paid for: they are
    delivered (their indexes are ``n`` and up), up to :data:`MAX_DELIVERED_IMAGES`.
    """
    count = len(items)
    if count <= n:
        return items, None
    kept = items[:MAX_DELIVERED_IMAGES]
    delivered = (
        f"all {count} are delivered (images {n} to {count - 1} beyond n)"
        if len(kept) == count
        else f"the first {len(kept)} are delivered, {count - len(kept)} are not"
    )
    return kept, (
        f"the service returned {count} images for n={n}: {count} billed, most likely (a relay that drops n "
        f"bills the model's default count); {delivered}"
    )


def parse_items(
    items: list[object],
    parse_item: Callable[[int, object], tuple[GeneratedImage | None, FailedImage | None]],
) -> tuple[list[GeneratedImage], list[FailedImage]]:
    """Each item of a billed answer read on its own: the images, and the items that are not one."""
    images: list[GeneratedImage] = []
    failed: list[FailedImage] = []
    for index, item in enumerate(items):
        try:
            image, failure = parse_item(index, item)
        except Exception as error:  # one item the parser failed on: the others are delivered
            image, failure = None, unreadable_item(index, error)
        if image is not None:
            images.append(image)
        if failure is not None:
            failed.append(failure)
    return images, failed
