"""Store generated images in Amazon S3: streamed, verified, with metadata, never overwriting silently."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_imggen import DEFAULT_CONN_ID
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.records import StoredImageRecord
from airflow_provider_imggen.transfers import arguments, keys, location_policy
from airflow_provider_imggen.transfers.concurrency import Background, run_concurrently
from airflow_provider_imggen.transfers.download import Downloaded, Downloader, check_expiry
from airflow_provider_imggen.transfers.ledger_record import record_stored_images
from airflow_provider_imggen.transfers.links import ImagesViewLink, S3ImageLink
from airflow_provider_imggen.transfers.sources import (
    Source,
    mask_url_credentials,
    read_sources,
    resolve_urls,
)
from airflow_provider_imggen.transfers.upload import (
    Planned,
    Uploader,
    check_conflicts,
    upload_args,
    xcom_entry,
)

if TYPE_CHECKING:
    import jinja2
    from airflow.sdk import Context
    from airflow.sdk.definitions.mappedoperator import OperatorPartial

    from airflow_provider_imggen.transfers._s3 import ImageS3Hook

DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
DEFAULT_DOWNLOAD_TIMEOUT = 300.0
# Seconds a failing task waits for the S3 client's build in its background thread before it fails.
BUILD_WAIT_ON_ERROR = 2.0


class ImageGenerationToS3Operator(BaseOperator):
    """
    Store the images of one or more image generations in Amazon S3.

    Each image is streamed from its signed result URL (or read from the storage location its generation
    task wrote it to) into a temporary file, in 256 KiB chunks, while its sha256 and size are computed; only
    a complete, well-formed PNG, JPEG or WebP image within ``max_image_bytes`` is uploaded (its structure is
    walked to the end, without decoding pixels), through the amazon provider's ``S3Hook``. Every image is
    downloaded and checked, and every key rendered and checked, before the first upload: a failing task
    stores nothing new.

    Result URLs are fetched under a result-URL policy set by the ``imggen`` connection: URLs on the API's
    own origin are trusted as the API is; any other URL must be https, on a host of the connection's extra
    ``result_hosts`` (default: the DashScope result stores ``dashscope-result-*.oss-*.aliyuncs.com``), and
    resolve to public addresses (extra ``allow_private_result_hosts`` opts in to private ones). Every
    redirect is checked the same way. Downloads never carry the API key; logs show result URLs only with
    their query values masked.

    Objects get the content type of the image and the metadata ``model``, ``seed``, ``request-id``,
    ``prompt-sha256``, ``sha256``, ``width`` and ``height``; ``input-sha256`` for an edit; and, when the
    generation's record names a price, ``cost-per-image`` (a plain decimal string) and ``cost-currency``
    (``CNY`` or ``USD``). A generation record that does not validate (its ``cost`` included) fails the
    task before anything is downloaded. Keys are deterministic: re-running the task
    leaves the same objects. With ``replace=False`` writes are conditional (``If-None-Match``): an existing
    object with the same content is left as it is (and reported), one with different content fails the
    task, even when another writer creates it at the same moment.

    The XCom ``return_value`` is a list with one dict per image (a :class:`~airflow_provider_imggen.
    records.StoredImageRecord`): ``s3_uri``, ``bucket``, ``key``, ``bytes``, ``sha256``, ``content_type``,
    ``width``, ``height``, ``generation``, ``index``, ``model``, ``seed``, ``prompt``, ``request_id`` and
    ``skipped`` (never image bytes or signed URLs).

    :param generation: what to store: the XCom of an ``ImageGenerationOperator``, a list of them (the XCom
        of a mapped task), or image URLs / object-storage locations (strings) (templated)
    :param s3_bucket: destination bucket; may be omitted when ``s3_key`` is a full ``s3://bucket/key``
        (templated)
    :param s3_key: destination key of each image. Placeholders written in the template are filled per
        image: ``{index}``, ``{seed}``, ``{sha256}``, ``{ext}`` (png, jpg or webp), ``{model}``,
        ``{request_id}``, ``{generation}`` (position of the generation in the input list) and
        ``{map_index}``; integers take zero padding (``{index:03d}``). Jinja renders the rest, e.g.
        ``images/{{ ds }}/{map_index}-{index}.{ext}``; braces in Jinja's output are an error (templated)
    :param aws_conn_id: the AWS connection (templated)
    :param imggen_conn_id: the ``imggen`` connection whose base URL is trusted and whose extras set the
        result-URL policy; None: no trusted origin, the default policy (templated)
    :param replace: overwrite existing objects. When false, an existing object with the same content is
        skipped and one with other content fails the task. A mapped task with ``replace=True`` needs keys
        that depend on the map index (``{map_index}``)
    :param max_image_bytes: largest image accepted; a larger one fails the task and nothing is stored
    :param max_concurrency: images transferred at the same time
    :param extra_upload_args: further boto3 upload arguments (``ServerSideEncryption``, ``SSEKMSKeyId``,
        ``ACL``, ``StorageClass``, ``Metadata``, ``Tagging``...). Not templated: rendered fields are stored
        in the metadata database, and these can hold secrets (``SSECustomerKey``)
    :param download_retries: further attempts at a download that failed transiently (dropped connection,
        truncated body, HTTP 408/429/5xx), with exponential backoff
    :param download_retry_wait: first backoff between download attempts, in seconds (doubled each time)
    :param download_timeout: seconds one download attempt may take in all, however the bytes trickle in
        (templated)
    :param location_prefixes: where storage locations may be read, e.g. ``["s3://my-bucket/renders/",
        "/data/images/"]``. A location given as a plain string is read only under one of them (it carries
        no sha256 to check it by, and may come from an edited XCom); a generation record's location, under
        them when any are set. Not templated: a template can pull an XCom (nor ``.expand()`` it: that
        would take the rule from an XCom too)
    """

    template_fields: Sequence[str] = (
        "generation",
        "s3_bucket",
        "s3_key",
        "aws_conn_id",
        "imggen_conn_id",
        "download_timeout",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"generation": "json"}
    operator_extra_links = (ImagesViewLink(), S3ImageLink())
    ui_color = "#d8f0e8"

    def __init__(
        self,
        *,
        generation: Any,
        s3_bucket: str | None = None,
        s3_key: str,
        aws_conn_id: str | None = "aws_default",
        imggen_conn_id: str | None = DEFAULT_CONN_ID,
        replace: bool = False,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_concurrency: int = 4,
        extra_upload_args: dict[str, Any] | None = None,
        download_retries: int = 3,
        download_retry_wait: float = 1.0,
        download_timeout: float | str = DEFAULT_DOWNLOAD_TIMEOUT,
        location_prefixes: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.generation = generation
        self.s3_bucket = s3_bucket
        self.s3_key = s3_key
        self.aws_conn_id = aws_conn_id
        self.imggen_conn_id = imggen_conn_id
        self.replace = replace
        self.max_image_bytes = max_image_bytes
        self.max_concurrency = max_concurrency
        self.extra_upload_args = extra_upload_args
        self.download_retries = download_retries
        self.download_retry_wait = download_retry_wait
        self.download_timeout = download_timeout
        self.location_prefixes = location_prefixes
        # In-memory checks only: mapped tasks re-create the operator on workers through __init__.
        arguments.check_literal_arguments(
            {
                name: getattr(self, name)
                for name in ("s3_key", *arguments.UNTEMPLATED_CHECKED, "download_timeout")
            }
        )
        self._key_template: keys.KeyTemplate | None = None
        self._stored: list[tuple[str, str]] = []

    @classmethod
    def partial(cls, **kwargs: Any) -> OperatorPartial:
        """
        As :meth:`BaseOperator.partial`, with the literal arguments checked now, when the DAG is parsed.

        A mapped task's operator is only created on the worker: without this, a bad ``s3_key`` or
        ``max_concurrency`` would fail there, after the images were generated and billed.
        """
        from airflow.sdk.definitions.xcom_arg import XComArg

        arguments.check_literal_arguments(
            {name: value for name, value in kwargs.items() if not isinstance(value, XComArg)}
        )
        return super().partial(**kwargs)

    # -- execution ----------------------------------------------------------------------------------

    def render_template_fields(self, context: Context, jinja_env: jinja2.Environment | None = None) -> None:
        S3ImageLink.start(self)
        # The key's placeholders are found in the template as written, and hidden from Jinja: nothing Jinja
        # renders (a DAG run's conf, say) is ever read as a placeholder or a format spec.
        raw = self.s3_key
        prepared = keys.prepare(raw) if isinstance(raw, str) else None
        if prepared is not None:
            self.s3_key = prepared.text
        try:
            super().render_template_fields(context, jinja_env)
            if prepared is not None:
                self._key_template = prepared.parse_rendered(self.s3_key)
                self.s3_key = self._key_template.text
        finally:
            if prepared is not None and self._key_template is None:
                self.s3_key = raw
        if isinstance(self.generation, Iterator):
            # A one-shot iterator would be consumed by the masking below: keep its items.
            self.generation = list(self.generation)
        # Rendered fields are stored in the metadata database and shown in the UI, and `generation` holds
        # signed result URLs: register their credentials with the secrets masker before that happens.
        mask_url_credentials(self.generation)

    def get_s3_hook(self) -> ImageS3Hook:
        from airflow_provider_imggen.transfers._s3 import ImageS3Hook

        # Two parts of a multipart upload in flight per image: a 64 MiB image uploads in 0.83-0.91x
        # HttpToS3Operator's time instead of 1.0x one part at a time (bench_transfer_memory), while boto3's
        # default of 10 threads per image, multiplied by max_concurrency images, would cost about 3 MB
        # each. Images below boto3's 8 MiB multipart threshold are one PUT either way. An aws connection
        # can still set extra {"service_config": {"s3": {"transfer_config_args": {...}}}}, applied on top.
        return ImageS3Hook(
            aws_conn_id=self.aws_conn_id,
            extra_args=upload_args(self.extra_upload_args).hook_args,
            transfer_config_args={"max_concurrency": 2},
            if_none_match=not self.replace,
            caller=type(self).__name__,
        )

    def _s3_hook_with_client(self) -> ImageS3Hook:
        hook = self.get_s3_hook()
        hook.get_conn()
        return hook

    def execute(self, context: Context) -> list[dict[str, Any]]:
        started = time.monotonic()
        S3ImageLink.start(self)
        # 1. Everything that can be checked without a network call is checked first.
        sources = read_sources(
            self.generation, location_prefixes=location_policy.parse_prefixes(self.location_prefixes)
        )
        bucket, template = keys.split_bucket(self.s3_bucket, self._template())
        map_index = getattr(context["ti"], "map_index", None)
        keys.check_mapped(template, map_index=map_index, replace=self.replace)
        args = upload_args(self.extra_upload_args)
        download_timeout = arguments.download_timeout_seconds(self.download_timeout)
        early_keys = self._early_keys(template, sources, map_index)
        total = len(sources)
        self.log.info(
            "Storing %d image(s) from %d generation(s) in s3://%s/ (max_concurrency=%d, replace=%s)",
            total,
            len({source.generation for source in sources}),
            bucket,
            self.max_concurrency,
            self.replace,
        )
        # The S3 hook and its boto3 client are built beside the steps below (the downloads above all): a
        # task's first client imports boto3 and loads botocore's endpoint and S3 models, 0.3-0.5 s.
        hook = Background(self._s3_hook_with_client, name="imggen-s3-client")

        def uploader() -> Uploader:
            return Uploader(hook.result(), bucket, replace=self.replace, args=args, log=self.log, total=total)

        try:
            # 2. Images an earlier run stored already need no download.
            results: dict[int, StoredImageRecord] = {}
            if early_keys and not self.replace:
                results = self._find_stored(uploader(), early_keys, sources)
            pending = [source for source in sources if source.position not in results]
            check_expiry(pending)
            # Signed URLs travel masked in XCom: open the sealed copies (or read the native tasks again).
            pending = resolve_urls(pending, self.imggen_conn_id, self.log)
            self.log.info(
                "%d image(s) to download, %d stored by an earlier run (%.2fs to check)",
                len(pending),
                len(results),
                time.monotonic() - started,
            )

            with tempfile.TemporaryDirectory(prefix="imggen-to-s3-") as workdir:
                # 3. Download and check every image (result-URL policy, deadline, structure).
                downloader = self._downloader(pending, download_timeout, total)
                stop = threading.Event()
                downloaded = self._each(
                    lambda source: downloader.download(source, Path(workdir), stop), pending, stop
                )
                # 4. Render every key, then decide per key: upload, skip (same bytes there) or conflict.
                s3 = uploader()
                final_keys = self._final_keys(template, downloaded, early_keys, results, sources, map_index)
                plans = self._each(
                    lambda pair: s3.plan(*pair), list(zip(downloaded, final_keys, strict=True))
                )
                check_conflicts(plans)
                for plan in plans:
                    if plan.action == "skip":
                        self.log.info(
                            "Image %d/%d skipped: %s already holds identical content (sha256 %s)",
                            plan.image.source.position + 1,
                            total,
                            plan.uri,
                            plan.image.sha256,
                        )
                # 5. Upload (conditionally unless replace=True).
                to_upload = [plan for plan in plans if plan.action != "skip"]
                uploaded = dict(
                    zip((id(plan) for plan in to_upload), self._each(s3.upload, to_upload), strict=True)
                )
            for plan in plans:
                results[plan.image.source.position] = _entry(plan, skipped=not uploaded.get(id(plan), False))

        except BaseException:
            # Leaving on an error (a download failed, the task timed out): a client build still running,
            # say on a slow secrets backend, gets a moment to end, never the time to hold the failure back.
            hook.join(timeout=BUILD_WAIT_ON_ERROR)
            raise
        entries = [results[source.position] for source in sources]
        # A later run asking for the same request reuses these objects instead of paying again.
        record_stored_images(self.generation, entries, self.imggen_conn_id, self.log)
        self._stored = [(entry.bucket, entry.key) for entry in entries]
        stored = [entry for entry in entries if not entry.skipped]
        self.log.info(
            "Stored %d image(s) (%d bytes), skipped %d already stored, in %.2fs",
            len(stored),
            sum(entry.bytes for entry in stored),
            len(entries) - len(stored),
            time.monotonic() - started,
        )
        if entries:
            S3ImageLink.persist(
                context,
                self,
                bucket=entries[0].bucket,
                key=entries[0].key,
                region_name=_region(hook.result()),
                endpoint_url=_endpoint(hook.result()),
            )
        return [entry.to_dict() for entry in entries]

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

    # -- steps --------------------------------------------------------------------------------------

    def _template(self) -> keys.KeyTemplate:
        if self._key_template is not None:
            return self._key_template
        if not isinstance(self.s3_key, str) or not self.s3_key.strip():
            raise ImageGenerationValidationError("s3_key", self.s3_key, "expected a non-empty key")
        # execute() without render_template_fields(): no Jinja ran, the key is the template as written.
        return keys.parse(self.s3_key)

    def _each(self, function: Any, items: Sequence[Any], stop: threading.Event | None = None) -> list[Any]:
        return run_concurrently(function, items, max_concurrency=self.max_concurrency, stop=stop)

    def _downloader(self, pending: list[Source], download_timeout: float, total: int) -> Downloader:
        from airflow_provider_imggen.transfers.url_policy import ResultUrlPolicy

        # The connection is read only when a URL is to be fetched (locations need no policy).
        needs_policy = any(source.url and not source.location for source in pending)
        policy = ResultUrlPolicy.from_connection(self.imggen_conn_id if needs_policy else None)
        return Downloader(
            policy=policy,
            max_image_bytes=self.max_image_bytes,
            download_timeout=download_timeout,
            retries=self.download_retries,
            retry_wait=self.download_retry_wait,
            log=self.log,
            total=total,
        )

    @staticmethod
    def _values(
        source: Source, map_index: int | None, sha256: str | None, ext: str | None
    ) -> dict[str, object]:
        return {
            "index": source.index,
            "seed": source.seed,
            "sha256": sha256,
            "ext": ext,
            "model": source.model,
            "request_id": source.request_id,
            "generation": source.generation,
            "map_index": map_index if map_index is not None else -1,
        }

    def _early_keys(
        self, template: keys.KeyTemplate, sources: list[Source], map_index: int | None
    ) -> dict[int, str]:
        """
        Every image's key, rendered and checked for collisions before anything is transferred.

        Empty when the keys depend on the content: {sha256}, or {ext} for a source whose path does not end
        in an image suffix. Those keys are checked after the downloads, before any upload.
        """
        fields = template.fields
        if "sha256" in fields or ("ext" in fields and not all(source.ext_hint for source in sources)):
            return {}
        rendered = {
            source.position: template.render(
                self._values(source, map_index, None, source.ext_hint), source.label
            )
            for source in sources
        }
        keys.check_collisions(template, [(source.label, rendered[source.position]) for source in sources])
        return rendered

    def _find_stored(
        self, uploader: Uploader, early_keys: dict[int, str], sources: list[Source]
    ) -> dict[int, StoredImageRecord]:
        """
        The images an earlier run stored already, recognised by their metadata, without downloading them.

        Clearing and re-running the task must also work once the result URLs have expired.
        """
        found = self._each(
            lambda source: uploader.stored_already(early_keys[source.position], source), sources
        )
        results = {}
        for source, entry in zip(sources, found, strict=True):
            if entry is not None:
                results[source.position] = entry
                self.log.info(
                    "Image %d/%d skipped: %s already holds it (sha256 %s), stored by an earlier run",
                    source.position + 1,
                    len(sources),
                    entry.s3_uri,
                    entry.sha256,
                )
        return results

    def _final_keys(
        self,
        template: keys.KeyTemplate,
        downloaded: list[Downloaded],
        early_keys: dict[int, str],
        stored: dict[int, StoredImageRecord],
        sources: list[Source],
        map_index: int | None,
    ) -> list[str]:
        """The keys of the downloaded images, with their content known; all keys checked again."""
        final = [
            template.render(
                self._values(image.source, map_index, image.sha256, image.ext), image.source.label
            )
            for image in downloaded
        ]
        for image, key in zip(downloaded, final, strict=True):
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
        keys.check_collisions(
            template,
            [(source.label, stored[source.position].key) for source in sources if source.position in stored]
            + [(image.source.label, key) for image, key in zip(downloaded, final, strict=True)],
        )
        return final


def _entry(plan: Planned, *, skipped: bool) -> StoredImageRecord:
    image = plan.image
    return xcom_entry(
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


def _endpoint(hook: ImageS3Hook) -> str | None:
    """The S3 endpoint the hook talks to when it is not AWS's default (an S3-compatible store)."""
    try:
        endpoint = hook.conn_config.get_service_endpoint_url("s3")
    except Exception:  # the link is a convenience: never fail a finished transfer over it
        return None
    return str(endpoint) if endpoint else None


def _region(hook: ImageS3Hook) -> str | None:
    try:
        return str(hook.conn_region_name)
    except Exception:  # the link is a convenience: never fail a finished transfer over it
        return None
