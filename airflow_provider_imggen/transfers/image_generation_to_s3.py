"""Store generated images in Amazon S3: streamed, verified, with metadata, never overwriting silently."""

from __future__ import annotations

import hashlib
import os
import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import quote, unquote_plus, urlsplit

from airflow.sdk import BaseOperator, BaseOperatorLink

from airflow_provider_imggen.exceptions import (
    ImageGenerationValidationError,
    ImageResultExpiredError,
    ImageTransferError,
    ImageTransferRejectedError,
)
from airflow_provider_imggen.utils import mask_url, url_expiry

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

    from airflow_provider_imggen.transfers._s3 import ImageS3Hook

DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# Placeholders an s3_key may use, with a sample value of each (to try format specs such as {index:03d}).
KEY_PLACEHOLDERS: dict[str, object] = {
    "index": 0,
    "seed": 0,
    "sha256": "0" * 64,
    "ext": "png",
    "model": "model",
    "request_id": "request-id",
    "generation": 0,
}
# How many first bytes tell the image type (magic numbers).
_SNIFF_BYTES = 16
# Query parameters of signed URLs that are credentials (OSS, S3 SigV2/SigV4, GCS, Azure SAS "sig").
_CREDENTIAL_PARAMETERS = ("signature", "credential", "token", "accesskeyid")
_SUFFIX_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_QUERY_VALUE = re.compile(r"([?&][\w.-]+=)[^&\s'\")]+")
_T = TypeVar("_T")
_R = TypeVar("_R")


def _sniff(head: bytes) -> tuple[str, str, str] | None:
    """Content type, extension and Pillow format from an image's first bytes; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png", "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg", "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", "webp", "WEBP"
    return None


class S3ImageLink(BaseOperatorLink):
    """Link to the first stored image in the S3 console."""

    name: ClassVar[str] = "S3 object"
    key: ClassVar[str] = "s3_image_link"

    @staticmethod
    def format_link(bucket: str, key: str, region_name: str | None) -> str:
        return (
            f"https://console.aws.amazon.com/s3/object/{quote(bucket, safe='')}"
            f"?region={quote(region_name or 'us-east-1', safe='')}&prefix={quote(key, safe='/')}"
        )

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        stored = XCom.get_value(ti_key=ti_key, key=self.key)
        if not isinstance(stored, dict) or not stored.get("bucket") or not stored.get("key"):
            return ""
        return self.format_link(stored["bucket"], stored["key"], stored.get("region_name"))


@dataclass(frozen=True)
class _Source:
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


@dataclass(frozen=True)
class _Downloaded:
    source: _Source
    path: Path
    size: int
    sha256: str
    content_type: str
    ext: str
    width: int
    height: int
    seconds: float


@dataclass(frozen=True)
class _Planned:
    """A downloaded image, its destination and what to do there."""

    image: _Downloaded
    bucket: str
    key: str
    action: str  # "upload", "overwrite", "skip" (identical content there) or "conflict"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class _TransientDownloadError(Exception):
    """A download failure worth another attempt: dropped connection, truncated body, 5xx, throttling."""


class _Cancelled(Exception):
    """Another image failed: this one stops early (its own outcome no longer matters)."""


class ImageGenerationToS3Operator(BaseOperator):
    """
    Store the images of one or more image generations in Amazon S3.

    Each image is streamed from its signed result URL (or read from the storage location its generation
    task wrote it to) into a temporary file, in 1 MiB chunks, while its sha256 and size are computed and
    its type is checked from its magic number; only a complete PNG, JPEG or WebP image within
    ``max_image_bytes`` is uploaded (boto3 multipart upload through the amazon provider's ``S3Hook``).
    Every image is downloaded and checked, and every key rendered and checked, before the first upload: a
    failing task stores nothing new. Downloads never carry the API key, and the logs show result URLs only
    with their query strings masked.

    Objects get the content type of the image and the metadata ``model``, ``seed``, ``request-id``,
    ``prompt-sha256``, ``sha256``, ``width`` and ``height``. Keys are deterministic: re-running the task
    leaves the same objects. With ``replace=False`` an existing object with the same content is left as it
    is (and reported), one with different content fails the task.

    The XCom ``return_value`` is a list with one dict per image: ``s3_uri``, ``bucket``, ``key``,
    ``bytes``, ``sha256``, ``content_type``, ``width``, ``height``, ``generation``, ``index``, ``model``,
    ``seed``, ``prompt``, ``request_id`` and ``skipped`` (never image bytes or signed URLs).

    :param generation: what to store: the XCom of an ``ImageGenerationOperator``, a list of them (the XCom
        of a mapped task), or image URLs / object-storage locations (strings) (templated)
    :param s3_bucket: destination bucket; may be omitted when ``s3_key`` is a full ``s3://bucket/key``
        (templated)
    :param s3_key: destination key of each image. After Jinja, ``str.format`` placeholders are filled per
        image: ``{index}``, ``{seed}``, ``{sha256}``, ``{ext}`` (png, jpg or webp), ``{model}``,
        ``{request_id}`` and ``{generation}`` (position of the generation in the input list), e.g.
        ``images/{{ ds }}/{{ ti.map_index }}-{index}.{ext}`` (templated)
    :param aws_conn_id: the AWS connection (templated)
    :param replace: overwrite existing objects. When false, an existing object with the same content is
        skipped and one with other content fails the task
    :param max_image_bytes: largest image accepted; a larger one fails the task and nothing is stored
    :param max_concurrency: images transferred at the same time
    :param extra_upload_args: further boto3 upload arguments (``ServerSideEncryption``, ``SSEKMSKeyId``,
        ``ACL``, ``StorageClass``, ``Metadata``, ``Tagging``...). Not templated: rendered fields are stored
        in the metadata database, and these can hold secrets (``SSECustomerKey``)
    :param download_retries: further attempts at a download that failed transiently (dropped connection,
        truncated body, HTTP 408/429/5xx), with exponential backoff
    :param download_retry_wait: first backoff between download attempts, in seconds (doubled each time)
    """

    template_fields: Sequence[str] = ("generation", "s3_bucket", "s3_key", "aws_conn_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"generation": "json"}
    operator_extra_links = (S3ImageLink(),)
    ui_color = "#d8f0e8"

    def __init__(
        self,
        *,
        generation: Any,
        s3_bucket: str | None = None,
        s3_key: str,
        aws_conn_id: str | None = "aws_default",
        replace: bool = False,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_concurrency: int = 4,
        extra_upload_args: dict[str, Any] | None = None,
        download_retries: int = 3,
        download_retry_wait: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.generation = generation
        self.s3_bucket = s3_bucket
        self.s3_key = s3_key
        self.aws_conn_id = aws_conn_id
        self.replace = replace
        self.max_image_bytes = max_image_bytes
        self.max_concurrency = max_concurrency
        self.extra_upload_args = extra_upload_args
        self.download_retries = download_retries
        self.download_retry_wait = download_retry_wait
        # In-memory checks only: mapped tasks re-create the operator on workers through __init__.
        _check_number("max_image_bytes", max_image_bytes, minimum=1)
        _check_number("max_concurrency", max_concurrency, minimum=1)
        _check_number("download_retries", download_retries, minimum=0)
        _check_number("download_retry_wait", download_retry_wait, minimum=0, integer=False)
        if not isinstance(replace, bool):
            raise ImageGenerationValidationError("replace", replace, "expected True or False")
        if extra_upload_args is not None and not isinstance(extra_upload_args, dict):
            raise ImageGenerationValidationError(
                "extra_upload_args", type(extra_upload_args).__name__, "expected a dict of boto3 ExtraArgs"
            )
        self._stored: list[tuple[str, str]] = []

    # -- execution ----------------------------------------------------------------------------------

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        super().render_template_fields(context, jinja_env)
        if isinstance(self.generation, Iterator):
            # A one-shot iterator would be consumed by the masking below: keep its items.
            self.generation = list(self.generation)
        # Rendered fields are stored in the metadata database and shown in the UI, and `generation` holds
        # signed result URLs: register their credentials with the secrets masker before that happens.
        _mask_url_credentials(self.generation)

    def get_s3_hook(self) -> ImageS3Hook:
        from airflow_provider_imggen.transfers._s3 import ImageS3Hook

        # Images already transfer max_concurrency at a time; boto3's own pool of 10 part-upload threads per
        # image would multiply that and costs about 18 MB on the first upload (measured), for little gain
        # on images that are mostly below its 8 MiB multipart threshold. An aws connection can still set
        # extra {"service_config": {"s3": {"transfer_config_args": {...}}}}, which S3Hook applies on top.
        return ImageS3Hook(
            aws_conn_id=self.aws_conn_id,
            extra_args=self._upload_args()[0],
            transfer_config_args={"use_threads": False},
        )

    def execute(self, context: Context) -> list[dict[str, Any]]:
        import tempfile

        started = time.monotonic()
        # Everything that can be checked without a network call is checked first.
        sources = self._sources()
        bucket, key_template, fields = self._key_template()
        self._upload_args()
        early_keys = self._early_keys(key_template, fields, sources)
        total = len(sources)
        self.log.info(
            "Storing %d image(s) from %d generation(s) in s3://%s/ (max_concurrency=%d, replace=%s)",
            total,
            len({source.generation for source in sources}),
            bucket,
            self.max_concurrency,
            self.replace,
        )
        hook = self.get_s3_hook()
        results: dict[int, dict[str, Any]] = {}
        if early_keys and not self.replace:
            results = self._find_stored(hook, bucket, early_keys, sources)
        pending = [source for source in sources if source.position not in results]
        self._check_expiry(pending)

        with tempfile.TemporaryDirectory(prefix="imggen-to-s3-") as workdir:
            stop = threading.Event()
            downloaded = self._run_concurrently(
                lambda source: self._download(source, Path(workdir), stop, total), pending, stop
            )
            keys = self._final_keys(key_template, fields, downloaded, early_keys, results, sources)
            plans = self._run_concurrently(
                lambda pair: self._plan(hook, bucket, pair[0], pair[1]),
                list(zip(downloaded, keys, strict=True)),
                threading.Event(),
            )
            self._check_conflicts(plans)
            for plan in plans:
                if plan.action == "skip":
                    self.log.info(
                        "Image %d/%d skipped: %s already holds identical content (sha256 %s)",
                        plan.image.source.position + 1,
                        total,
                        plan.uri,
                        plan.image.sha256,
                    )
            self._run_concurrently(
                lambda plan: self._upload(hook, plan, total),
                [plan for plan in plans if plan.action != "skip"],
                threading.Event(),
            )
        for plan in plans:
            results[plan.image.source.position] = self._entry(plan, skipped=plan.action == "skip")

        entries = [results[source.position] for source in sources]
        self._stored = [(entry["bucket"], entry["key"]) for entry in entries]
        uploaded = [entry for entry in entries if not entry["skipped"]]
        self.log.info(
            "Stored %d image(s) (%d bytes), skipped %d already stored, in %.2fs",
            len(uploaded),
            sum(entry["bytes"] for entry in uploaded),
            len(entries) - len(uploaded),
            time.monotonic() - started,
        )
        if entries and self.do_xcom_push:
            context["ti"].xcom_push(
                key=S3ImageLink.key,
                value={
                    "bucket": entries[0]["bucket"],
                    "key": entries[0]["key"],
                    "region_name": _region(hook),
                },
            )
        return entries

    def get_openlineage_facets_on_complete(self, task_instance: object) -> Any:
        """Output datasets: the S3 objects, including those left as they were (S3Hook reports uploads)."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        return OperatorLineage(
            outputs=[Dataset(namespace=f"s3://{bucket}", name=key) for bucket, key in self._stored]
        )

    # -- input --------------------------------------------------------------------------------------

    def _sources(self) -> list[_Source]:
        """The images to store, from the rendered ``generation``; raises before anything is downloaded."""
        if self.generation is None:
            raise ImageGenerationValidationError(
                "generation", None, "expected an ImageGenerationOperator XCom, a list of them, or image URLs"
            )
        sources: list[_Source] = []
        for position, item in enumerate(_flatten(self.generation)):
            if isinstance(item, str):
                sources.append(self._string_source(item, position, len(sources)))
            elif isinstance(item, Mapping):
                sources.extend(self._generation_sources(item, position, len(sources)))
            else:
                raise ImageGenerationValidationError(
                    f"generation[{position}]",
                    type(item).__name__,
                    "expected an ImageGenerationOperator XCom (a dict) or an image URL / storage location",
                )
        if not sources:
            raise ImageGenerationValidationError("generation", "(empty)", "there are no images to store")
        return sources

    @staticmethod
    def _string_source(item: str, generation: int, position: int) -> _Source:
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
        return _Source(
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

    @staticmethod
    def _generation_sources(item: Mapping[str, Any], generation: int, position: int) -> list[_Source]:
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
                _Source(
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

    # -- keys ---------------------------------------------------------------------------------------

    def _key_template(self) -> tuple[str, str, frozenset[str]]:
        """The bucket, the key template and the placeholders it uses (all checked)."""
        template = self.s3_key
        if not isinstance(template, str) or not template.strip():
            raise ImageGenerationValidationError("s3_key", template, "expected a non-empty key")
        bucket = (self.s3_bucket or "").strip() if isinstance(self.s3_bucket, str | None) else None
        if bucket is None:
            raise ImageGenerationValidationError("s3_bucket", self.s3_bucket, "expected a bucket name")
        if template.startswith("s3://"):
            if bucket:
                raise ImageGenerationValidationError(
                    "s3_key",
                    template,
                    "give either s3_bucket and a key relative to it, or a full s3://bucket/key in s3_key",
                )
            bucket, _, template = template.removeprefix("s3://").partition("/")
            if "{" in bucket:
                raise ImageGenerationValidationError(
                    "s3_key", self.s3_key, "the bucket cannot hold placeholders"
                )
        if not bucket:
            raise ImageGenerationValidationError(
                "s3_bucket", self.s3_bucket, "set s3_bucket, or give s3_key as a full s3://bucket/key"
            )
        if not template:
            raise ImageGenerationValidationError("s3_key", self.s3_key, "the key is empty")
        fields: set[str] = set()
        try:
            for _, name, _, _ in string.Formatter().parse(template):
                if name is None:
                    continue
                if name not in KEY_PLACEHOLDERS:
                    raise ImageGenerationValidationError(
                        "s3_key",
                        template,
                        f"unknown placeholder {{{name}}}; known: "
                        + ", ".join(f"{{{known}}}" for known in KEY_PLACEHOLDERS),
                    )
                fields.add(name)
            template.format(**KEY_PLACEHOLDERS)
        except (ValueError, IndexError, KeyError) as error:
            raise ImageGenerationValidationError(
                "s3_key",
                template,
                f"not a valid key template ({error}); literal braces are written {{{{ }}}}",
            ) from None
        return bucket, template, frozenset(fields)

    @staticmethod
    def _render_key(
        template: str,
        fields: frozenset[str],
        source: _Source,
        sha256: str | None = None,
        ext: str | None = None,
    ) -> str:
        values: dict[str, object] = {
            "index": source.index,
            "seed": source.seed,
            "sha256": sha256,
            "ext": ext,
            "model": source.model,
            "request_id": source.request_id,
            "generation": source.generation,
        }
        missing = sorted(name for name in fields if values[name] is None)
        if missing:
            raise ImageGenerationValidationError(
                "s3_key",
                template,
                f"{source.label} has no value for {', '.join(f'{{{name}}}' for name in missing)} "
                "(plain URLs and locations carry no seed, model or request id)",
            )
        try:
            key = template.format(**{name: values[name] for name in fields})
        except (ValueError, TypeError) as error:
            raise ImageGenerationValidationError(
                "s3_key", template, f"cannot be rendered for {source.label}: {error}"
            ) from None
        if not key:
            raise ImageGenerationValidationError("s3_key", template, f"renders empty for {source.label}")
        return key

    @staticmethod
    def _check_collisions(template: str, keyed: Sequence[tuple[_Source, str]]) -> None:
        by_key: dict[str, list[_Source]] = {}
        for source, key in keyed:
            by_key.setdefault(key, []).append(source)
        collisions = {key: group for key, group in by_key.items() if len(group) > 1}
        if collisions:
            shown = "; ".join(
                f"{', '.join(source.label for source in group)} -> {key!r}"
                for key, group in list(collisions.items())[:5]
            )
            raise ImageGenerationValidationError(
                "s3_key",
                template,
                f"{len(collisions)} key(s) would be written by more than one image, so nothing was stored: "
                f"{shown}. Make keys unique with placeholders: {{index}} for the images of a generation, "
                "{generation} for several generations, {{ ti.map_index }} in mapped tasks, or {sha256}",
            )

    def _early_keys(self, template: str, fields: frozenset[str], sources: list[_Source]) -> dict[int, str]:
        """
        Every image's key, rendered and checked for collisions before anything is transferred.

        Empty when the keys depend on the content: {sha256}, or {ext} for a source whose path does not end
        in an image suffix. Those keys are checked after the downloads, before any upload.
        """
        if "sha256" in fields or ("ext" in fields and not all(source.ext_hint for source in sources)):
            return {}
        keys = {
            source.position: self._render_key(template, fields, source, ext=source.ext_hint)
            for source in sources
        }
        self._check_collisions(template, [(source, keys[source.position]) for source in sources])
        return keys

    def _find_stored(
        self, hook: ImageS3Hook, bucket: str, keys: dict[int, str], sources: list[_Source]
    ) -> dict[int, dict[str, Any]]:
        """
        The images an earlier run stored already, recognised by their metadata, without downloading them.

        Clearing and re-running the task must also work once the result URLs have expired.
        """
        found = self._run_concurrently(
            lambda source: self._stored_already(hook, bucket, keys[source.position], source),
            sources,
            threading.Event(),
        )
        results = {}
        for source, entry in zip(sources, found, strict=True):
            if entry is not None:
                results[source.position] = entry
                self.log.info(
                    "Image %d/%d skipped: %s already holds it (sha256 %s), stored by an earlier run",
                    source.position + 1,
                    len(sources),
                    entry["s3_uri"],
                    entry["sha256"],
                )
        return results

    def _final_keys(
        self,
        template: str,
        fields: frozenset[str],
        downloaded: list[_Downloaded],
        early_keys: dict[int, str],
        stored: dict[int, dict[str, Any]],
        sources: list[_Source],
    ) -> list[str]:
        """The keys of the downloaded images, with their content known; all keys checked again."""
        keys = [
            self._render_key(template, fields, image.source, image.sha256, image.ext) for image in downloaded
        ]
        for image, key in zip(downloaded, keys, strict=True):
            early = early_keys.get(image.source.position)
            if early is not None and early != key:
                self.log.warning(
                    "Image %d/%d is %s although its path ends in .%s: stored as %s",
                    image.source.position + 1,
                    len(sources),
                    image.content_type,
                    image.source.ext_hint,
                    key,
                )
        # Cheap, and needed for {sha256} keys and for an {ext} the path did not predict.
        self._check_collisions(
            template,
            [(source, stored[source.position]["key"]) for source in sources if source.position in stored]
            + [(image.source, key) for image, key in zip(downloaded, keys, strict=True)],
        )
        return keys

    @staticmethod
    def _check_conflicts(plans: list[_Planned]) -> None:
        conflicts = [plan for plan in plans if plan.action == "conflict"]
        if conflicts:
            shown = "; ".join(f"{plan.uri} ({plan.image.source.label})" for plan in conflicts[:5])
            raise ImageTransferRejectedError(
                f"{len(conflicts)} object(s) already exist with different content and replace=False: "
                f"{shown}{'...' if len(conflicts) > 5 else ''}. Nothing was uploaded. Use other keys "
                "(e.g. with {sha256}), or replace=True to overwrite"
            )

    # -- download -----------------------------------------------------------------------------------

    def _check_expiry(self, sources: Iterable[_Source]) -> None:
        now = datetime.now(UTC)
        expired = [
            source
            for source in sources
            if source.url and not source.location and source.url_expires_at and source.url_expires_at <= now
        ]
        if expired:
            shown = ", ".join(
                f"{source.label} at {source.url_expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
                for source in expired
                if source.url_expires_at
            )
            raise ImageResultExpiredError(
                f"The result URL expired for {len(expired)} image(s) ({shown}); result URLs are valid for "
                "about 24 h. Re-run the generation task for fresh URLs, then this task. Nothing was stored"
            )

    def _download(self, source: _Source, workdir: Path, stop: threading.Event, total: int) -> _Downloaded:
        """Download one image into ``workdir``, retrying transient failures; check it is a whole image."""
        from tenacity import (
            RetryCallState,
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential,
            wait_random,
        )

        attempts = self.download_retries + 1
        path = workdir / f"{source.position:06d}"

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            self.log.warning(
                "Image %d/%d: download from %s failed (attempt %d of %d): %s; retrying in %.2fs",
                source.position + 1,
                total,
                source.shown_source,
                state.attempt_number,
                attempts,
                error,
                state.next_action.sleep if state.next_action else 0.0,
            )

        # Jitter keeps concurrent retries apart.
        backoff = wait_exponential(multiplier=self.download_retry_wait, max=30) + wait_random(
            0, self.download_retry_wait
        )
        started = time.monotonic()
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(attempts),
                wait=backoff,
                retry=retry_if_exception_type(_TransientDownloadError),
                before_sleep=log_retry,
                reraise=True,
            ):
                with attempt:
                    if stop.is_set():
                        raise _Cancelled()
                    if source.location:
                        received = self._read_location(source, path, stop)
                    else:
                        received = self._fetch_url(source, path, stop)
        except _TransientDownloadError as error:
            raise ImageTransferError(
                f"Could not download {source.label} from {source.shown_source} after {attempts} "
                f"attempt(s): {error}. Nothing was stored; a task retry downloads again (no new generation)"
            ) from None
        size, sha256, (content_type, ext, pillow_format) = received
        width, height = _dimensions(path, pillow_format, source)
        seconds = time.monotonic() - started
        self.log.info(
            "Image %d/%d downloaded: %d bytes in %.2fs (%.1f MB/s) from %s (%s, %dx%d)",
            source.position + 1,
            total,
            size,
            seconds,
            _mb_per_second(size, seconds),
            source.shown_source,
            content_type,
            width,
            height,
        )
        return _Downloaded(source, path, size, sha256, content_type, ext, width, height, seconds)

    def _fetch_url(
        self, source: _Source, path: Path, stop: threading.Event
    ) -> tuple[int, str, tuple[str, str, str]]:
        """One HTTP download attempt, in a plain session: the API key never goes to result URLs."""
        import requests
        from requests.utils import get_environ_proxies

        from airflow_provider_imggen import __version__

        url = str(source.url)
        with requests.Session() as session:
            # No environment lookups by requests itself: ~/.netrc credentials would be sent along.
            session.trust_env = False
            session.headers.update(
                {"User-Agent": f"airflow-provider-imggen/{__version__}", "Accept-Encoding": "identity"}
            )
            try:
                with session.get(
                    url,
                    stream=True,
                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                    proxies=get_environ_proxies(url),
                    verify=os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True,
                ) as response:
                    self._check_status(source, response.status_code)
                    length_header = response.headers.get("Content-Length")
                    length = int(length_header) if length_header and length_header.isdigit() else None
                    if length is not None and length > self.max_image_bytes:
                        raise self._too_large(source, length)
                    return self._receive(response.iter_content(CHUNK_BYTES), path, source, stop, length)
            except requests.exceptions.ChunkedEncodingError as error:
                raise _TransientDownloadError(
                    f"truncated download: the connection closed before the whole body arrived "
                    f"({_safe_error(error, url)})"
                ) from None
            except requests.RequestException as error:
                # Connection errors and timeouts. Their text quotes the URL: never show its signature.
                raise _TransientDownloadError(_safe_error(error, url)) from None

    def _check_status(self, source: _Source, status: int) -> None:
        if status < 300:
            return
        if status == 403:
            raise ImageResultExpiredError(
                f"The result URL of {source.label} was refused (HTTP 403, {source.shown_source}): signed "
                "result URLs expire after about 24 h. Re-run the generation task for fresh URLs, then this "
                "task. Nothing was stored"
            )
        if status in _RETRYABLE_STATUSES or status >= 500:
            raise _TransientDownloadError(f"HTTP {status}")
        raise ImageTransferRejectedError(
            f"Downloading {source.label} from {source.shown_source} failed with HTTP {status}"
            + (": the result is gone; re-run the generation task" if status in (404, 410) else "")
            + ". Nothing was stored"
        )

    def _read_location(
        self, source: _Source, path: Path, stop: threading.Event
    ) -> tuple[int, str, tuple[str, str, str]]:
        """One attempt at reading an image its generation task wrote to object storage."""
        from airflow.sdk import ObjectStoragePath

        location = str(source.location)
        try:
            storage_path = ObjectStoragePath(location if "://" in location else f"file://{location}")
            with storage_path.open("rb") as stream:
                chunks = iter(lambda: stream.read(CHUNK_BYTES), b"")
                received = self._receive(chunks, path, source, stop, None)
        except FileNotFoundError:
            raise ImageTransferRejectedError(
                f"{source.label}: {location} does not exist. Nothing was stored"
            ) from None
        except OSError as error:
            raise _TransientDownloadError(f"reading {location} failed: {error}") from None
        size, sha256, _ = received
        if source.expected_bytes is not None and size != source.expected_bytes:
            raise _TransientDownloadError(f"read {size} bytes, the generation wrote {source.expected_bytes}")
        if source.expected_sha256 and sha256 != source.expected_sha256:
            raise _TransientDownloadError("the content's sha256 differs from the one the generation recorded")
        return received

    def _receive(
        self,
        chunks: Iterable[bytes],
        path: Path,
        source: _Source,
        stop: threading.Event,
        expected_length: int | None,
    ) -> tuple[int, str, tuple[str, str, str]]:
        """Write chunks to ``path`` (constant memory), hashing and counting them and sniffing the type."""
        digest = hashlib.sha256()
        size = 0
        head = b""
        kind: tuple[str, str, str] | None = None
        with open(path, "wb") as out:
            for chunk in chunks:
                if stop.is_set():
                    raise _Cancelled()
                if not chunk:
                    continue
                size += len(chunk)
                if size > self.max_image_bytes:
                    raise self._too_large(source, size, at_least=True)
                if kind is None:
                    head += chunk[: _SNIFF_BYTES - len(head)]
                    if len(head) >= _SNIFF_BYTES:
                        # Reject an error page at its first bytes instead of downloading all of it.
                        kind = self._kind(head, source)
                digest.update(chunk)
                out.write(chunk)
        if expected_length is not None and size < expected_length:
            raise _TransientDownloadError(f"truncated download: {size} of {expected_length} bytes arrived")
        if kind is None:
            kind = self._kind(head, source)
        return size, digest.hexdigest(), kind

    @staticmethod
    def _kind(head: bytes, source: _Source) -> tuple[str, str, str]:
        kind = _sniff(head)
        if kind is None:
            raise ImageTransferRejectedError(
                f"{source.label} from {source.shown_source} is not a PNG, JPEG or WebP image (it starts "
                f"with {head[:_SNIFF_BYTES]!r}: an error page?). Nothing was stored"
            )
        return kind

    def _too_large(self, source: _Source, size: int, *, at_least: bool = False) -> ImageTransferRejectedError:
        return ImageTransferRejectedError(
            f"{source.label} from {source.shown_source} is {'over ' if at_least else ''}{size} bytes, more "
            f"than max_image_bytes={self.max_image_bytes}. Nothing was stored"
        )

    # -- S3 -----------------------------------------------------------------------------------------

    def _upload_args(self) -> tuple[dict[str, Any], dict[str, str], bool, str | None]:
        """
        ``extra_upload_args`` split for S3Hook: (hook extra_args, user Metadata, encrypt, acl_policy).

        What ``S3Hook.load_file`` takes itself (AES256 encryption, a canned ACL) goes through its
        arguments, the rest through the hook's ``extra_args``.
        """
        args = dict(self.extra_upload_args or {})
        if "ContentType" in args:
            raise ImageGenerationValidationError(
                "extra_upload_args['ContentType']",
                args["ContentType"],
                "the content type is taken from each image's magic number; remove it",
            )
        metadata = args.pop("Metadata", None) or {}
        if not isinstance(metadata, dict):
            raise ImageGenerationValidationError(
                "extra_upload_args['Metadata']", type(metadata).__name__, "expected a dict of strings"
            )
        if args:
            from boto3.s3.transfer import S3Transfer

            unknown = sorted(set(args) - set(S3Transfer.ALLOWED_UPLOAD_ARGS))
            if unknown:
                raise ImageGenerationValidationError(
                    "extra_upload_args",
                    unknown,
                    "unknown upload argument(s); allowed: " + ", ".join(S3Transfer.ALLOWED_UPLOAD_ARGS),
                )
        encrypt = args.get("ServerSideEncryption") == "AES256"
        if encrypt:
            del args["ServerSideEncryption"]
        acl_policy = args.pop("ACL", None)
        return args, {str(name): str(value) for name, value in metadata.items()}, encrypt, acl_policy

    def _stored_already(
        self, hook: ImageS3Hook, bucket: str, key: str, source: _Source
    ) -> dict[str, Any] | None:
        """The XCom entry for ``key`` when it already holds this very image (by its recorded identity)."""
        head = self._head(hook, bucket, key)
        if head is None:
            return None
        metadata = head.get("Metadata") or {}
        sha256 = metadata.get("sha256")
        same = bool(sha256) and (
            (source.expected_sha256 is not None and sha256 == source.expected_sha256)
            or (
                source.request_id is not None
                and source.seed is not None
                and metadata.get("request-id") == _ascii(source.request_id)
                and metadata.get("seed") == str(source.seed)
                and source.model is not None
                and metadata.get("model") == _ascii(source.model)
            )
        )
        if not same:
            return None
        return _xcom_entry(
            bucket,
            key,
            source,
            size=int(head.get("ContentLength") or 0),
            sha256=str(sha256),
            content_type=head.get("ContentType"),
            width=_int_or_none(metadata.get("width")),
            height=_int_or_none(metadata.get("height")),
            skipped=True,
        )

    def _plan(self, hook: ImageS3Hook, bucket: str, image: _Downloaded, key: str) -> _Planned:
        """What to do at ``key``: upload, overwrite, skip (same content there) or conflict."""
        if self.replace:
            return _Planned(image, bucket, key, "overwrite")
        head = self._head(hook, bucket, key)
        if head is None:
            return _Planned(image, bucket, key, "upload")
        stored_sha256 = (head.get("Metadata") or {}).get("sha256")
        if stored_sha256 is None:
            # Not written by this operator: compare the content itself.
            stored_sha256 = self._object_sha256(hook, bucket, key)
        return _Planned(image, bucket, key, "skip" if stored_sha256 == image.sha256 else "conflict")

    @staticmethod
    def _head(hook: ImageS3Hook, bucket: str, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return hook.head_object(key, bucket)
        except (BotoCoreError, ClientError) as error:
            raise ImageTransferError(f"Checking s3://{bucket}/{key} failed: {error}") from None

    @staticmethod
    def _object_sha256(hook: ImageS3Hook, bucket: str, key: str) -> str:
        digest = hashlib.sha256()
        body = hook.get_key(key, bucket).get()["Body"]
        for chunk in body.iter_chunks(CHUNK_BYTES):
            digest.update(chunk)
        return digest.hexdigest()

    def _upload(self, hook: ImageS3Hook, plan: _Planned, total: int) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        _, user_metadata, encrypt, acl_policy = self._upload_args()
        image, source = plan.image, plan.image.source
        metadata = {
            **user_metadata,
            "sha256": image.sha256,
            "width": str(image.width),
            "height": str(image.height),
        }
        for name, value in (
            ("model", source.model),
            ("seed", source.seed),
            ("request-id", source.request_id),
            ("prompt-sha256", hashlib.sha256(source.prompt.encode()).hexdigest() if source.prompt else None),
        ):
            if value is not None:
                metadata[name] = _ascii(str(value))
        started = time.monotonic()
        try:
            with hook.upload_args({"ContentType": image.content_type, "Metadata": metadata}):
                # From the file's name, not an open file object: boto3 reads each multipart part of a
                # file object into memory (8 MiB, up to 10 at once), but streams parts of a named file
                # from disk. replace=False makes S3Hook check again just before writing: an object that
                # appeared since the plan was made is not overwritten.
                hook.load_file(
                    image.path,
                    key=plan.key,
                    bucket_name=plan.bucket,
                    replace=plan.action == "overwrite",
                    encrypt=encrypt,
                    acl_policy=acl_policy,
                )
        except ValueError as error:
            if "already exists" not in str(error):
                raise
            raise ImageTransferRejectedError(
                f"{plan.uri} appeared while {source.label} was being stored (replace=False): not overwritten"
            ) from None
        except (BotoCoreError, ClientError, Boto3Error) as error:
            # boto3 has retried already; a task retry starts again from the still-valid result URLs.
            raise ImageTransferError(f"Uploading {source.label} to {plan.uri} failed: {error}") from None
        seconds = time.monotonic() - started
        self.log.info(
            "Image %d/%d stored: %d bytes, %s -> %s (download %.1f MB/s, upload %.1f MB/s)",
            source.position + 1,
            total,
            image.size,
            source.shown_source,
            plan.uri,
            _mb_per_second(image.size, image.seconds),
            _mb_per_second(image.size, seconds),
        )

    @staticmethod
    def _entry(plan: _Planned, *, skipped: bool) -> dict[str, Any]:
        image = plan.image
        return _xcom_entry(
            plan.bucket,
            plan.key,
            image.source,
            size=image.size,
            sha256=image.sha256,
            content_type=image.content_type,
            width=image.width,
            height=image.height,
            skipped=skipped,
        )

    # -- concurrency --------------------------------------------------------------------------------

    def _run_concurrently(
        self, function: Callable[[_T], _R], items: Sequence[_T], stop: threading.Event
    ) -> list[_R]:
        """``function`` over ``items``, ``max_concurrency`` at a time; the first error stops the others."""
        if len(items) <= 1 or self.max_concurrency == 1:
            # Nothing to overlap: no thread (each new thread costs its own malloc arena).
            return [function(item) for item in items]
        with ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(items)), thread_name_prefix="imggen-to-s3"
        ) as pool:

            def guarded(item: _T) -> _R:
                try:
                    return function(item)
                except BaseException:
                    # Set here, in the worker, so that queued items see it before they start.
                    stop.set()
                    raise

            futures = [pool.submit(guarded, item) for item in items]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(future.exception() for future in done):
                stop.set()
                for future in futures:
                    future.cancel()
                wait(futures)
                # The earliest item that failed, whichever thread failed first: the same error every run.
                error = next(
                    future.exception()
                    for future in futures
                    if not future.cancelled() and future.exception() is not None
                )
                assert error is not None
                raise error
        return [future.result() for future in futures]


def _mask_url_credentials(generation: object) -> None:
    """Register the credentials in signed URLs (signatures, tokens, key ids) with the secrets masker."""
    from airflow.sdk.log import mask_secret

    for item in _flatten(generation):
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


def _flatten(value: object) -> list[object]:
    """The generation input as a flat list: a dict or a string is one item; lists and lazy XCom lists nest."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return [value]
    return [item for element in value for item in _flatten(element)]


def _check_number(name: str, value: object, *, minimum: float, integer: bool = True) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not isinstance(value, kinds)
        or value < minimum
    ):
        raise ImageGenerationValidationError(
            name, value, f"expected {'a whole number' if integer else 'a number'} >= {minimum:g}"
        )


def _as_int(where: str, name: str, value: object) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value))
    except ValueError:
        raise ImageGenerationValidationError(f"{where}['{name}']", value, "expected an integer") from None


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ascii(value: str) -> str:
    """S3 metadata values travel as HTTP headers: percent-encode anything outside printable ASCII."""
    return value if value.isascii() and value.isprintable() else quote(value, safe=" !#$&'()*+,/:;=?@[]~")


def _safe_error(error: BaseException, url: str) -> str:
    """An exception's text without the signed URL's credentials (requests errors quote the URL)."""
    text = f"{type(error).__name__}: {error}"
    query = urlsplit(url).query
    if query:
        text = text.replace(query, urlsplit(mask_url(url)).query)
    # Any other query string left (a redirect target, say): mask its values too.
    return _QUERY_VALUE.sub(r"\1***", text)


def _dimensions(path: Path, pillow_format: str, source: _Source) -> tuple[int, int]:
    """Width and height from the image header (Pillow opens lazily: no pixel is decoded here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=[pillow_format]) as image:
            return image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ImageTransferRejectedError(
            f"{source.label} from {source.shown_source} has a {pillow_format} signature but no readable "
            f"header ({type(error).__name__}: {error}). Nothing was stored"
        ) from None


def _mb_per_second(size: int, seconds: float) -> float:
    return size / 1e6 / seconds if seconds > 0 else 0.0


def _region(hook: ImageS3Hook) -> str | None:
    try:
        return str(hook.conn_region_name)
    except Exception:  # the link is a convenience: never fail a finished transfer over it
        return None


def _xcom_entry(
    bucket: str,
    key: str,
    source: _Source,
    *,
    size: int,
    sha256: str,
    content_type: str | None,
    width: int | None,
    height: int | None,
    skipped: bool,
) -> dict[str, Any]:
    return {
        "s3_uri": f"s3://{bucket}/{key}",
        "bucket": bucket,
        "key": key,
        "bytes": size,
        "sha256": sha256,
        "content_type": content_type,
        "width": width,
        "height": height,
        "generation": source.generation,
        "index": source.index,
        "model": source.model,
        "seed": source.seed,
        "prompt": source.prompt,
        "request_id": source.request_id,
        "skipped": skipped,
    }
