"""Operator generating images from a (templated) prompt."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.metadata import generation_metadata
from airflow_provider_imggen.models import MAX_SEED, GenerationRequest, validate_generation_request

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook, ImageGenerationResult

DEFAULT_CONN_ID = "imggen_default"
PROMPT_TEMPLATE_EXTENSIONS = (".txt", ".j2", ".jinja")
# A seed the operator picks leaves room for seed + i on each of up to 10 images.
_PICKED_SEED_RANGE = MAX_SEED - 16


class ImageGenerationOperator(BaseOperator):
    """
    Generate images from a text prompt and push their metadata (never their bytes) to XCom.

    Every request parameter is validated against the model's limits before anything billable is sent:
    literal values when the DAG is parsed, rendered values before the request. A bad value fails the task
    at once, without Airflow retries, naming the parameter, the value and what is allowed.

    The XCom ``return_value`` is a JSON-serialisable dict: ``model``, ``prompt``, ``negative_prompt``,
    ``size``, ``n``, ``seed``, ``response_format``, ``prompt_upsampling``, ``created`` (epoch),
    ``created_at`` (ISO 8601), ``request_id``, ``usage`` and ``images``: a list of ``{index, seed, url,
    url_expires_at, revised_prompt, location, bytes, sha256}``. Result URLs expire (about 24 h): store
    the images with ``ImageGenerationToS3Operator``.

    :param prompt: what to draw, or a template file ending in .txt, .j2 or .jinja (templated)
    :param model: model name; defaults to the connection's ``default_model`` (templated)
    :param n: number of images: 1 for qwen-image, 1-4 for wan2.2-t2i-* (templated)
    :param size: ``WxH`` or ``W*H``; defaults to the model's default size (templated)
    :param response_format: ``url`` (signed URLs in XCom) or ``b64_json`` (images written under
        ``output_path``, their locations in XCom) (templated)
    :param negative_prompt: what to avoid (templated)
    :param prompt_upsampling: let the API rewrite the prompt; the API's default is true (templated)
    :param seed: 0-2147483647; image ``i`` uses ``seed + i``. When omitted, the operator derives one from
        the task instance and the prompt and records it, so a retry or a re-run reproduces the same
        images (templated)
    :param extra_body: further top-level JSON fields for the API, as a dict or a JSON object string
        (templated)
    :param imggen_conn_id: the ``imggen`` connection (templated)
    :param request_timeout: read timeout of the request in seconds; defaults to the connection's
        (templated)
    :param output_path: where ``b64_json`` images are written: an object-storage URI understood by
        :class:`airflow.sdk.ObjectStoragePath` (``file:///data/images``, ``s3://aws_default@bucket/prefix``).
        Files are named ``<dag_id>/<run_id>/<task_id>/[<map_index>-]<index>.png`` below it (templated)
    """

    template_fields: Sequence[str] = (
        "prompt",
        "model",
        "n",
        "size",
        "response_format",
        "negative_prompt",
        "prompt_upsampling",
        "seed",
        "extra_body",
        "imggen_conn_id",
        "request_timeout",
        "output_path",
    )
    template_ext: Sequence[str] = PROMPT_TEMPLATE_EXTENSIONS
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "extra_body": "json",
        "prompt": "txt",
        "negative_prompt": "txt",
    }
    ui_color = "#e8d8ff"

    def __init__(
        self,
        *,
        prompt: str,
        model: str | None = None,
        n: int | str = 1,
        size: str | None = None,
        response_format: str = "url",
        negative_prompt: str | None = None,
        prompt_upsampling: bool | str | None = None,
        seed: int | str | None = None,
        extra_body: dict[str, Any] | str | None = None,
        imggen_conn_id: str = DEFAULT_CONN_ID,
        request_timeout: float | str | None = None,
        output_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.model = model
        self.n = n
        self.size = size
        self.response_format = response_format
        self.negative_prompt = negative_prompt
        self.prompt_upsampling = prompt_upsampling
        self.seed = seed
        self.extra_body = extra_body
        self.imggen_conn_id = imggen_conn_id
        self.request_timeout = request_timeout
        self.output_path = output_path
        self._validate_literal_arguments()

    # -- DAG-parse-time validation ------------------------------------------------------------------

    def _validate_literal_arguments(self) -> None:
        """
        Check the arguments that are already final, so a broken DAG shows an import error.

        Templated values (and XComArgs) are replaced by neutral placeholders: they are checked after
        rendering. Pure in-memory work: mapped operators are re-created on workers through ``__init__``.
        """
        checked = {
            name: getattr(self, name) if _is_literal(getattr(self, name)) else placeholder
            for name, placeholder in (
                ("model", None),
                ("n", 1),
                ("size", None),
                ("response_format", "url"),
                ("negative_prompt", None),
                ("prompt_upsampling", None),
                ("seed", None),
            )
        }
        prompt = self.prompt
        if not _is_literal(prompt) or (
            isinstance(prompt, str) and prompt.endswith(PROMPT_TEMPLATE_EXTENSIONS)
        ):
            prompt = "templated prompt"
        # Without a literal model the connection's default applies; only the model-independent rules hold.
        model = checked.pop("model") or "model-from-connection"
        extra_body: object = self.extra_body if _is_literal(self.extra_body) else None
        if isinstance(extra_body, str):
            extra_body = _parse_extra_body(extra_body)
        validate_generation_request(prompt=prompt, model=model, extra_body=extra_body, **checked)
        if _is_literal(self.request_timeout):
            _parse_timeout(self.request_timeout)
        if checked["response_format"] == "b64_json" and _is_literal(self.output_path):
            self._check_output_path(self.output_path)

    @staticmethod
    def _check_output_path(output_path: object) -> str:
        if not isinstance(output_path, str) or not output_path.strip():
            raise ImageGenerationValidationError(
                "output_path",
                output_path,
                "response_format='b64_json' returns the image bytes inline, and XCom must never carry them: "
                "set output_path to a storage location (e.g. 'file:///data/images' or "
                "'s3://aws_default@bucket/prefix'), or use response_format='url'",
            )
        if "://" not in output_path and not output_path.startswith("/"):
            raise ImageGenerationValidationError(
                "output_path", output_path, "expected an absolute path or a URI such as s3://bucket/prefix"
            )
        return output_path.rstrip("/")

    # -- execution ----------------------------------------------------------------------------------

    @cached_property
    def hook(self) -> ImageGenerationHook:
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

        return ImageGenerationHook(
            imggen_conn_id=self.imggen_conn_id, request_timeout=_parse_timeout(self.request_timeout)
        )

    def execute(self, context: Context) -> dict[str, Any]:
        request = self.hook.validate_request(
            self.prompt,
            model=_none_if_blank(self.model),
            n=self.n,
            size=_none_if_blank(self.size),
            response_format=self.response_format,
            negative_prompt=_none_if_blank(self.negative_prompt),
            prompt_upsampling=_none_if_blank(self.prompt_upsampling),
            seed=_none_if_blank(self.seed),
            extra_body=_parse_extra_body(self.extra_body)
            if isinstance(self.extra_body, str)
            else self.extra_body,
        )
        output_path = None
        if request.response_format == "b64_json":
            output_path = self._check_output_path(self.output_path)
        seed = request.seed if request.seed is not None else self._derived_seed(context, request)
        if request.seed is None:
            self.log.info(
                "No seed given: using seed=%d (derived from this task instance and the prompt)", seed
            )

        result = self.hook.generate_images(
            request.prompt,
            model=request.model,
            n=request.n,
            size=request.size,
            response_format=request.response_format,
            negative_prompt=request.negative_prompt,
            prompt_upsampling=request.prompt_upsampling,
            seed=seed,
            extra_body=request.extra_body or None,
        )
        return self._metadata(result, request, seed, output_path, context)

    def on_kill(self) -> None:
        # Closing the session aborts the request in flight; nothing else holds resources.
        if "hook" in self.__dict__:
            self.hook.close()

    def _derived_seed(self, context: Context, request: GenerationRequest) -> int:
        """A seed stable for this task instance and prompt: retries and re-runs give the same images."""
        ti = context["ti"]
        identity = json.dumps(
            [ti.dag_id, ti.run_id, ti.task_id, ti.map_index, request.model, request.prompt, request.size]
        )
        return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big") % _PICKED_SEED_RANGE

    def _metadata(
        self,
        result: ImageGenerationResult,
        request: GenerationRequest,
        seed: int,
        output_path: str | None,
        context: Context,
    ) -> dict[str, Any]:
        files = {
            image.index: self._write_image(image.data, image.index, output_path, context)
            for image in result.images
            if image.data is not None and output_path is not None
        }
        return generation_metadata(
            result,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            size=request.size,
            n=request.n,
            seed=seed,
            response_format=request.response_format,
            prompt_upsampling=request.prompt_upsampling,
            files=files,
        )

    def _write_image(self, data: bytes, index: int, output_path: str, context: Context) -> dict[str, Any]:
        """Write one decoded image below ``output_path``; the path is unique per task instance and image."""
        from airflow.sdk import ObjectStoragePath

        ti = context["ti"]
        name = (
            f"{ti.map_index}-{index}.png"
            if ti.map_index is not None and ti.map_index >= 0
            else f"{index}.png"
        )
        if "://" not in output_path:
            output_path = f"file://{output_path}"
        path = ObjectStoragePath(output_path) / _safe(ti.dag_id) / _safe(ti.run_id) / _safe(ti.task_id) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.log.info("Wrote image %d (%d bytes) to %s", index, len(data), path)
        return {"location": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _is_literal(value: object) -> bool:
    """Whether a constructor argument is final: not a Jinja template and not a lazy XCom reference."""
    if isinstance(value, str):
        return "{{" not in value and "{%" not in value
    if isinstance(value, (dict, list, tuple)):
        items = value.values() if isinstance(value, dict) else value
        return all(_is_literal(item) for item in items)
    return value is None or isinstance(value, (int, float, bool))


def _none_if_blank(value: object) -> object:
    """A template that rendered to nothing ("" or "None") means the parameter was not given."""
    return None if value is None or (isinstance(value, str) and value.strip() in ("", "None")) else value


def _parse_timeout(value: object) -> float | None:
    if _none_if_blank(value) is None:
        return None
    try:
        timeout = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise ImageGenerationValidationError("request_timeout", value, "expected seconds > 0")
    return timeout


def _parse_extra_body(value: str) -> object:
    """extra_body rendered from a whole-value template arrives as a JSON string."""
    try:
        return json.loads(value)
    except ValueError:
        raise ImageGenerationValidationError(
            "extra_body", value, "expected a dict, or a string holding a JSON object"
        ) from None


def _safe(part: str) -> str:
    """A path segment from a dag, run or task id (run ids contain ':' and '+')."""
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in part)
