"""The images a transfer stores, read from its rendered ``generation`` input (XComs, URLs, locations)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_imggen.exceptions import ImageGenerationValidationError, ResultUrlSealError
from airflow_provider_imggen.records import GenerationRecord
from airflow_provider_imggen.sealed_urls import register_secrets, registered_together, unseal
from airflow_provider_imggen.transfers.location_policy import Place, is_allowed
from airflow_provider_imggen.utils import is_masked_url, is_sha256, mask_url, parse_time, url_expiry

_SUFFIX_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}


@dataclass(frozen=True)
class Source:
    """One image to store, and what is known about it before it is downloaded."""

    position: int  # 0-based over every image of the task: progress is reported as position + 1 of N
    generation: int  # position of its generation in the input list
    index: int  # index within its generation
    url: str | None  # as shown: masked when it came from XCom
    location: str | None
    url_expires_at: datetime | None
    model: str | None
    seed: int | None
    prompt: str | None
    request_id: str | None
    expected_sha256: str | None
    expected_bytes: int | None
    url_sealed: str | None = None  # the full URL, encrypted with Airflow's Fernet key
    generation_task_id: str | None = None  # the native task to read the URL again from
    fetch_url: str | None = None  # the URL downloaded: never logged, never in XCom
    # The sha256 of the input images it was edited from, in order (an editing model's generation).
    input_sha256s: tuple[str, ...] = ()
    # Its generation's price per image and currency, as cost_from_xcom validated them; None when the
    # record names no price (an older XCom, a model or connection without one).
    cost_per_image: str | None = None
    cost_currency: str | None = None

    @property
    def ext_hint(self) -> str | None:
        """The extension the source's path announces (result URLs end in .png), to render keys early."""
        path = urlsplit(self.location or self.url or "").path.lower()
        return _SUFFIX_EXTENSIONS.get(path.rsplit(".", 1)[-1]) if "." in path.rsplit("/", 1)[-1] else None

    @property
    def label(self) -> str:
        return f"image {self.index} of generation {self.generation}"

    @property
    def shown_source(self) -> str:
        """Where the image comes from, safe to log: signed URLs lose their query values."""
        return self.location if self.location else mask_url(self.url or "")


def read_sources(generation: Any, *, location_prefixes: Sequence[Place] = ()) -> list[Source]:
    """
    The images to store, from the rendered ``generation``; raises before anything is downloaded.

    :param location_prefixes: where storage locations may be read (see :mod:`.location_policy`)
    """
    if generation is None:
        raise ImageGenerationValidationError(
            "generation", None, "expected an ImageGenerationOperator XCom, a list of them, or image URLs"
        )
    sources: list[Source] = []
    for position, item in enumerate(flatten(generation)):
        if isinstance(item, str):
            sources.append(_string_source(item, position, len(sources)))
        elif isinstance(item, Mapping):
            sources.extend(_generation_sources(item, position, len(sources)))
        else:
            raise ImageGenerationValidationError(
                f"generation[{position}]",
                type(item).__name__,
                "expected an ImageGenerationOperator XCom (a dict) or an image URL / storage location",
            )
    for source in sources:
        if source.location:
            _check_location_place(source, location_prefixes)
    if not sources:
        raise ImageGenerationValidationError("generation", "(empty)", "there are no images to store")
    return sources


def _check_location_place(source: Source, prefixes: Sequence[Place]) -> None:
    """A plain location is read only under the DAG's prefixes; a record's, under them when there are any."""
    plain = source.expected_sha256 is None
    if (plain or prefixes) and not is_allowed(str(source.location), prefixes):
        where = f"generation[{source.generation}]" + ("" if plain else f"['images'] (index {source.index})")
        raise ImageGenerationValidationError(
            f"{where} (a storage location)",
            "(not shown: it may come from an XCom)",
            "a storage location is read only under the prefixes the DAG lists in location_prefixes "
            "(e.g. ['s3://my-bucket/renders/']); a location given as plain text carries no sha256 "
            "to check it by" + ("" if prefixes else ", and no location_prefixes are set"),
        )


def _string_source(item: str, generation: int, position: int) -> Source:
    text = item.strip()
    if text.startswith(("{", "[")):
        raise ImageGenerationValidationError(
            f"generation[{generation}]",
            f"{text[:40]}...",
            "got the text of a dict or list: pass the XComArg (generate_task.output), or set "
            "render_template_as_native_obj=True on the DAG when pulling the XCom in a template",
        )
    try:
        scheme = urlsplit(text).scheme.lower()
    except ValueError:  # urlsplit's own message quotes the text, which may come from an XCom
        raise ImageGenerationValidationError(
            f"generation[{generation}]", "(not shown)", "not a URL or a storage location urlsplit can read"
        ) from None
    is_url = scheme in ("http", "https")
    if not is_url and "://" not in text and not text.startswith("/"):
        raise ImageGenerationValidationError(
            f"generation[{generation}]",
            mask_url(text),
            "expected an image URL (https://...) or a storage location (s3://..., file:///...)",
        )
    return Source(
        position=position,
        generation=generation,
        index=0,
        url=text if is_url else None,
        location=None if is_url else text,
        url_expires_at=url_expiry(text) if is_url else None,
        model=None,
        seed=None,
        prompt=None,
        request_id=None,
        expected_sha256=None,
        expected_bytes=None,
        fetch_url=text if is_url else None,
    )


def _generation_sources(item: Mapping[str, Any], generation: int, position: int) -> list[Source]:
    where = f"generation[{generation}]"
    images = item.get("images")
    if not isinstance(images, list) or not images:
        raise ImageGenerationValidationError(
            f"{where}['images']",
            type(images).__name__ if images else images,
            "expected the non-empty image list of an ImageGenerationOperator XCom",
        )
    # Every field is checked here, the cost among them (XCom can be edited): an invalid one fails the task
    # before anything is downloaded, as any other invalid field of the record does.
    record = GenerationRecord.from_dict(item, where=where)
    per_image, currency = price_per_image(record.cost)
    sources = []
    for offset, image in enumerate(record.images):
        if not image.url and not image.location:
            raise ImageGenerationValidationError(
                f"{where}['images'][{offset}]",
                "{url: None, location: None}",
                "an image needs a 'url' or a 'location' (b64_json results are only stored when the "
                "generation task has an output_path)",
            )
        if image.location:
            _check_location_identity(image.sha256, image.bytes, f"{where}['images'][{offset}]")
        seed = image.seed if image.seed is not None else record.seed
        url = None if image.location else image.url
        sources.append(
            Source(
                position=position + offset,
                generation=generation,
                index=image.index,
                # A masked URL (XCom shows no query value) is opened from url_sealed, or the native task is
                # read again, by resolve_urls(); an unmasked one (an older XCom) is used as it is.
                url=url,
                location=image.location,
                url_expires_at=parse_time(image.url_expires_at) or (url_expiry(url) if url else None),
                model=record.model,
                seed=seed,
                prompt=record.prompt,
                request_id=record.request_id,
                expected_sha256=image.sha256 if image.location else None,
                expected_bytes=image.bytes if image.location else None,
                url_sealed=image.url_sealed if url else None,
                generation_task_id=record.generation_task_id,
                fetch_url=url if url and not image.url_sealed and not is_masked_url(url) else None,
                input_sha256s=input_digests(record.input_images),
                cost_per_image=per_image,
                cost_currency=currency,
            )
        )
    return sources


def _check_location_identity(sha256: str | None, size: int | None, where: str) -> None:
    """
    A location read from an XCom is stored only as the very image its generation wrote there: XCom can be
    edited, and a location without its sha256 could name any object or file the worker can read.
    """
    if not is_sha256(sha256):
        raise ImageGenerationValidationError(
            f"{where}['sha256']",
            "(missing)" if not sha256 else "(not 64 hex digits)",
            "an image read from a storage location needs the sha256 its generation recorded, which its "
            "content must match (the XCom was edited, or was not written by ImageGenerationOperator)",
        )
    # ImageRecord.from_dict has refused anything but an integer (or None) already.
    if size is None or size < 1:
        raise ImageGenerationValidationError(
            f"{where}['bytes']",
            "(missing)" if size is None else "(not a positive size)",
            "an image read from a storage location needs the size its generation recorded",
        )


def price_per_image(cost: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """
    The price per image and its currency from a generation record's ``cost`` (already validated by
    :func:`~airflow_provider_imggen.prices.cost_from_xcom`), for the stored objects' metadata: both or
    neither, since an amount without its currency (or the reverse) says nothing about money.
    """
    if not cost:
        return None, None
    per_image, currency = cost.get("per_image"), cost.get("currency")
    if per_image is None or currency is None:
        return None, None
    return str(per_image), str(currency)


def input_digests(input_images: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """
    The inputs' sha256 a generation's XCom records, for the stored objects' metadata. XCom can be edited:
    only well-formed digests (64 lowercase hex digits) are kept, at most 10 (what fits S3's 2 KB of
    metadata beside the rest).
    """
    digests = (item.get("sha256") for item in input_images)
    return tuple(str(digest) for digest in digests if is_sha256(digest))[:10]


def resolve_urls(sources: list[Source], imggen_conn_id: str | None, log: Any) -> list[Source]:
    """
    The sources with the URL each download uses (``fetch_url``): opened from ``url_sealed`` with Airflow's
    Fernet key, else read again from the native task (``generation_task_id``) through the ``imggen``
    connection. The URLs' secrets are registered with the secrets masker.

    :raises ResultUrlSealError: a sealed URL no configured key opens, with no native task to read again
    :raises ImageGenerationValidationError: a masked URL with neither a sealed copy nor a native task
    """
    with registered_together():  # one pattern for all the URLs' secrets, not one per URL
        return _resolve_urls(sources, imggen_conn_id, log)


def _resolve_urls(sources: list[Source], imggen_conn_id: str | None, log: Any) -> list[Source]:
    resolved: list[Source] = []
    to_reread: dict[str, list[int]] = {}
    for source in sources:
        if source.url is None or source.fetch_url is not None:
            if source.fetch_url is not None:
                register_secrets(source.fetch_url)
            resolved.append(source)
            continue
        if source.url_sealed:
            try:
                resolved.append(replace(source, fetch_url=unseal(source.url_sealed, label=source.label)))
                continue
            except ResultUrlSealError as error:
                if source.generation_task_id is None:
                    raise
                log.warning("%s. Reading task %s again instead", error, source.generation_task_id)
        if source.generation_task_id is None:
            raise ImageGenerationValidationError(
                f"generation[{source.generation}]['images'][{source.index}]",
                source.shown_source,
                "the URL is masked (XCom never shows signed URLs) and the record has neither 'url_sealed' "
                "nor a native 'generation_task_id' to read it from: pass the generating task's XCom as it "
                "was pushed",
            )
        to_reread.setdefault(source.generation_task_id, []).append(len(resolved))
        resolved.append(source)
    if to_reread:
        urls = _reread_tasks(list(to_reread), imggen_conn_id, log)
        for generation_task_id, positions in to_reread.items():
            for at in positions:
                source = resolved[at]
                url = urls[generation_task_id].get(source.index)
                if url is None:
                    raise ImageGenerationValidationError(
                        f"generation[{source.generation}]['images'][{source.index}]",
                        source.shown_source,
                        f"task {generation_task_id} has no image {source.index} any more",
                    )
                resolved[at] = replace(source, fetch_url=url)
    return resolved


def _reread_tasks(
    generation_task_ids: list[str], imggen_conn_id: str | None, log: Any
) -> dict[str, dict[int, str]]:
    """Per native task, its result URLs by image index, read again from the API (a free status query)."""
    if imggen_conn_id is None:
        raise ImageGenerationValidationError(
            "imggen_conn_id",
            None,
            "the result URLs are not sealed (or their seal does not open here) and must be read again from "
            "their native tasks "
            f"({', '.join(generation_task_ids)}): set imggen_conn_id to the connection that generated them",
        )
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

    hook = ImageGenerationHook(imggen_conn_id=imggen_conn_id)
    urls: dict[str, dict[int, str]] = {}
    try:
        for generation_task_id in generation_task_ids:
            log.info("Reading the result URLs of task %s again from the API", generation_task_id)
            result = hook.result_from_task(hook.get_task(generation_task_id))
            urls[generation_task_id] = {image.index: image.url for image in result.images if image.url}
            for url in urls[generation_task_id].values():
                register_secrets(url)
    finally:
        hook.close()
    return urls


def mask_url_credentials(generation: object) -> None:
    """
    Register the secrets of signed URLs given as plain strings (or in older XComs) with the secrets masker:
    every query value and any user credentials. URLs that are already masked have none.
    """
    with registered_together():
        for item in flatten(generation):
            _register_plain_urls(item)


def _register_plain_urls(item: object) -> None:
    urls: list[object] = [item]
    if isinstance(item, Mapping):
        images = item.get("images")
        urls = (
            [image.get("url") for image in images if isinstance(image, Mapping)]
            if isinstance(images, list)
            else []
        )
    for url in urls:
        if isinstance(url, str) and not is_masked_url(url):
            register_secrets(url)


def flatten(value: object) -> list[object]:
    """The generation input as a flat list: a dict or a string is one item; lists and lazy XCom lists nest."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return [value]
    return [item for element in value for item in flatten(element)]
