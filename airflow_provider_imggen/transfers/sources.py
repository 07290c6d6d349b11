"""The images a transfer stores, read from its rendered ``generation`` input (XComs, URLs, locations)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.utils import mask_url, url_expiry

_SUFFIX_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}
# Query parameters of signed URLs that are credentials (OSS, S3 SigV2/SigV4, GCS, Azure SAS "sig").
_CREDENTIAL_PARAMETERS = ("signature", "credential", "token", "accesskeyid")


@dataclass(frozen=True)
class Source:
    """One image to store, and what is known about it before it is downloaded."""

    position: int  # 0-based over every image of the task: progress is reported as position + 1 of N
    generation: int  # position of its generation in the input list
    index: int  # index within its generation
    url: str | None
    location: str | None
    url_expires_at: datetime | None
    model: str | None
    seed: int | None
    prompt: str | None
    request_id: str | None
    expected_sha256: str | None
    expected_bytes: int | None

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


def read_sources(generation: Any) -> list[Source]:
    """The images to store, from the rendered ``generation``; raises before anything is downloaded."""
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
    if not sources:
        raise ImageGenerationValidationError("generation", "(empty)", "there are no images to store")
    return sources


def _string_source(item: str, generation: int, position: int) -> Source:
    text = item.strip()
    if text.startswith(("{", "[")):
        raise ImageGenerationValidationError(
            f"generation[{generation}]",
            f"{text[:40]}...",
            "got the text of a dict or list: pass the XComArg (generate_task.output), or set "
            "render_template_as_native_obj=True on the DAG when pulling the XCom in a template",
        )
    scheme = urlsplit(text).scheme.lower()
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
    )


def _generation_sources(item: Mapping[str, Any], generation: int, position: int) -> list[Source]:
    images = item.get("images")
    if not isinstance(images, list) or not images:
        raise ImageGenerationValidationError(
            f"generation[{generation}]['images']",
            type(images).__name__ if images else images,
            "expected the non-empty image list of an ImageGenerationOperator XCom",
        )
    sources = []
    for offset, image in enumerate(images):
        where = f"generation[{generation}]['images'][{offset}]"
        if not isinstance(image, Mapping):
            raise ImageGenerationValidationError(where, type(image).__name__, "expected a dict")
        url, location = image.get("url"), image.get("location")
        if not url and not location:
            raise ImageGenerationValidationError(
                where,
                "{url: None, location: None}",
                "an image needs a 'url' or a 'location' (b64_json results are only stored when the "
                "generation task has an output_path)",
            )
        seed = image.get("seed", item.get("seed"))
        sources.append(
            Source(
                position=position + offset,
                generation=generation,
                index=_as_int(where, "index", image.get("index", offset)),
                url=str(url) if url else None,
                location=str(location) if location else None,
                url_expires_at=_parse_time(image.get("url_expires_at"))
                or (url_expiry(str(url)) if url else None),
                model=item.get("model"),
                seed=None if seed is None else _as_int(where, "seed", seed),
                prompt=item.get("prompt"),
                request_id=item.get("request_id"),
                expected_sha256=image.get("sha256") if location else None,
                expected_bytes=image.get("bytes") if location else None,
            )
        )
    return sources


def mask_url_credentials(generation: object) -> None:
    """Register the credentials in signed URLs (signatures, tokens, key ids) with the secrets masker."""
    from airflow.sdk.log import mask_secret

    for item in flatten(generation):
        urls: list[object] = [item]
        if isinstance(item, Mapping):
            images = item.get("images")
            urls = (
                [image.get("url") for image in images if isinstance(image, Mapping)]
                if isinstance(images, list)
                else []
            )
        for url in urls:
            if not isinstance(url, str):
                continue
            for pair in urlsplit(url).query.split("&"):
                name, _, raw = pair.partition("=")
                lowered = unquote_plus(name).lower()
                if raw and (lowered == "sig" or any(marker in lowered for marker in _CREDENTIAL_PARAMETERS)):
                    # As it appears in the URL and decoded: both forms turn up in rendered values.
                    mask_secret(raw)
                    mask_secret(unquote_plus(raw))


def flatten(value: object) -> list[object]:
    """The generation input as a flat list: a dict or a string is one item; lists and lazy XCom lists nest."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return [value]
    return [item for element in value for item in flatten(element)]


def _as_int(where: str, name: str, value: object) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value))
    except ValueError:
        raise ImageGenerationValidationError(f"{where}['{name}']", value, "expected an integer") from None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
