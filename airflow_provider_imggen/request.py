"""
The request: its parameters, defined once (:class:`GenerationRequest`), and the one validation that builds
it (:func:`validate_generation_request`) against the model table and, when known, the connection's API.

Everything else takes a validated request: the hook routes and sends it, the wire modules
(:mod:`airflow_provider_imggen.wire`) spell it for their endpoint, the XCom records it. Stdlib only:
operators validate literal arguments at DAG-parse time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_provider_imggen.coercion import coerce_bool, coerce_int, parse_size
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.inputs.references import InputImage, parse_input_images

MAX_SEED = 2_147_483_647


RESPONSE_FORMATS = ("url", "b64_json")


ResponseFormat = Literal["url", "b64_json"]


# What a template renders for a missing value (a dag_run.conf key that is not there): never a real prompt.
RENDERED_MISSING_VALUES = frozenset({"None"})


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """
    A validated, normalised request: every field has its wire type. Its fields are the request's
    parameters, written here once: the operator's arguments, the hook's keyword arguments and the XCom's
    record of the request are derived from them (:data:`REQUEST_PARAMETERS`).

    :param model: the model name
    :param prompt: what to draw
    :param n: how many images (always sent: a Wan model's own default is 4, all billed)
    :param size: ``WxH`` as the user set it; None leaves the size to the service (its model default), so
        the provider never overrides the service's defaults with its own
    :param response_format: ``url`` or ``b64_json``
    :param negative_prompt: what to avoid
    :param prompt_upsampling: let the service rewrite the prompt (DashScope's ``prompt_extend``)
    :param seed: 0-2147483647; image ``i`` uses ``seed + i``
    :param extra_body: further JSON fields, for parameters the provider does not name
    :param watermark: ask the service to mark the images (its default: no mark)
    :param endpoint: the native endpoint asked for (``async``, ``sync``), None for the model's default
    :param images: the input images, in order (editing models; references only: the worker reads them,
        :mod:`~airflow_provider_imggen.inputs.resolve`, before anything is sent). Recorded in XCom as
        ``input_images``
    """

    # "recorded": the fields every generation's XCom carries, so that a sensor or a later run can read
    # what was asked for.
    model: str = field(metadata={"recorded": True})
    prompt: str = field(metadata={"recorded": True})
    n: int = field(default=1, metadata={"recorded": True})
    size: str | None = field(default=None, metadata={"recorded": True})
    response_format: ResponseFormat = "url"
    negative_prompt: str | None = field(default=None, metadata={"recorded": True})
    prompt_upsampling: bool | None = field(default=None, metadata={"recorded": True})
    seed: int | None = field(default=None, metadata={"recorded": True})
    extra_body: dict[str, Any] = field(default_factory=dict)
    watermark: bool | None = None
    endpoint: str | None = None
    images: tuple[InputImage, ...] = ()
    # Which API the request was validated for ((api_style, dialect)); None when not yet. The hook checks
    # a request against its connection only when it was validated for another one: once per send.
    validated_for: tuple[str, str | None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # A request rebuilt from its dict (a deferral's kwargs) gets its input images back as objects.
        if any(not isinstance(image, InputImage) for image in self.images):
            object.__setattr__(
                self,
                "images",
                tuple(
                    image if isinstance(image, InputImage) else InputImage(**image) for image in self.images
                ),
            )

    def for_record(self) -> GenerationRequest:
        """
        The request as fingerprints, task records and deferral kwargs keep it: input images by their
        sha256, without what was sent for them (a presigned URL changes with every signing; a data URI is
        the image itself).
        """
        if not any(image.wire is not None for image in self.images):
            return self
        return dataclasses.replace(self, images=tuple(image.without_wire() for image in self.images))

    @property
    def native_size(self) -> str | None:
        """The size as DashScope spells it (``W*H``), None when the service's default applies."""
        return self.size.replace("x", "*") if self.size is not None else None


# The request's parameters, in order: every field but the validation marker.
REQUEST_PARAMETERS: tuple[str, ...] = tuple(
    item.name for item in dataclasses.fields(GenerationRequest) if item.name != "validated_for"
)
# The parameters a generation's XCom records (``request`` of :class:`~airflow_provider_imggen.records.
# GenerationRecord`).
RECORDED_PARAMETERS: tuple[str, ...] = tuple(
    item.name for item in dataclasses.fields(GenerationRequest) if item.metadata.get("recorded")
)
# Top-level request fields with a parameter of their own; extra_body may not override them silently.
NAMED_FIELDS = frozenset(REQUEST_PARAMETERS) - {"extra_body", "endpoint"}
# The native API's names for the same things (extra_body joins the native body's ``parameters``):
# ``prompt_extend`` is ``prompt_upsampling``; input/parameters/model would rewrite the body's structure.
NATIVE_NAMED_FIELDS = NAMED_FIELDS | {"prompt_extend", "input", "parameters"}
# The gateway's nested dialect sends these under ``parameters`` / ``input``: extra_body may not replace them.
NESTED_NAMED_FIELDS = NAMED_FIELDS | {"input", "parameters"}


def check_extra_body(
    extra_body: object, api_style: str | None = None, dialect: str | None = None
) -> dict[str, Any]:
    """
    A copy of ``extra_body`` once it is a dict of JSON values (no NaN or infinity, which JSON cannot
    carry) that overrides no named parameter: the top-level names always, and for ``api_style=
    "dashscope"`` also the native names (``prompt_extend``, ``input``, ``parameters``).
    """
    if extra_body is None:
        return {}
    if not isinstance(extra_body, dict) or not all(isinstance(key, str) for key in extra_body):
        raise ImageGenerationValidationError(
            "extra_body", extra_body, "expected a dict of extra top-level JSON fields"
        )
    protected = NATIVE_NAMED_FIELDS if api_style == "dashscope" else NAMED_FIELDS
    if dialect == "nested" and api_style != "dashscope":
        protected = NESTED_NAMED_FIELDS
    clashing = sorted(protected.intersection(extra_body))
    if clashing:
        native = api_style is not None and not NAMED_FIELDS.issuperset(clashing)
        raise ImageGenerationValidationError(
            "extra_body",
            extra_body,
            f"{', '.join(clashing)} must be passed as the parameter(s) of that name, not in extra_body"
            + (
                " (prompt_extend is prompt_upsampling; input and parameters are built by the hook: with the"
                " nested gateway dialect, or api_style dashscope)"
                if native
                else ""
            ),
        )
    try:
        json.dumps(extra_body, allow_nan=False)
    except RecursionError:
        raise ImageGenerationValidationError(
            "extra_body", "...", "nested deeper than JSON can be written: expected a shallower dict"
        ) from None
    except (TypeError, ValueError) as error:
        raise ImageGenerationValidationError(
            "extra_body",
            extra_body,
            f"expected JSON values only (strings, finite numbers, booleans, null, lists, dicts): {error}",
        ) from None
    return dict(extra_body)


# Where in extra_body a named parameter reaches the API past the parameter's own check: relays and
# gateways read ``parameters.n`` or ``input.negative_prompt`` as the native API does (api-notes §7).
# Elsewhere a name means something else (a LoRA's ``model``): left alone.
_NESTING_OBJECTS = frozenset({"parameters", "input"})
_NESTED_NAMES = NAMED_FIELDS | {"prompt_extend"}
# What decides what is billed and what the records say was drawn: a nested value must equal the
# request's. The others must equal it when the request sets one.
_ALWAYS_EQUAL = frozenset({"model", "n", "prompt", "size"})


def nested_named_values(extra_body: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """
    The named parameters in ``extra_body``'s ``parameters`` and ``input`` objects, names compared without
    case or surrounding spaces (a relay may be as lenient): (where, name, value).
    """
    found = []
    for outer, inner in extra_body.items():
        if outer.strip().lower() not in _NESTING_OBJECTS or not isinstance(inner, dict):
            continue
        for key, value in inner.items():
            name = key.strip().lower() if isinstance(key, str) else None
            if name in _NESTED_NAMES:
                found.append((f"extra_body[{outer!r}][{key!r}]", name, value))
    return found


def _check_nested_values(request: GenerationRequest) -> None:
    """
    Each named parameter in the request's ``extra_body['parameters']`` / ``['input']`` passes the check of
    the parameter of that name against the same model table, in the request's context, and says what the
    request says (:data:`_ALWAYS_EQUAL` always, the others when the request sets them).
    """
    for where, name, value in nested_named_values(request.extra_body):
        parameter = "prompt_upsampling" if name == "prompt_extend" else name
        if parameter == "images":
            raise ImageGenerationValidationError(
                where, value, "input images are passed as images=..., where each one is checked"
            )
        arguments: dict[str, Any] = {
            key: getattr(request, key) for key in NAMED_FIELDS if key not in ("images", "extra_body")
        }
        arguments[parameter] = value
        try:
            checked = validate_generation_request(images_known=False, **arguments)
        except ImageGenerationValidationError as error:
            raise ImageGenerationValidationError(where, value, error.allowed) from None
        named = getattr(request, parameter)
        if (parameter in _ALWAYS_EQUAL or named is not None) and getattr(checked, parameter) != named:
            raise ImageGenerationValidationError(
                where,
                value,
                f"differs from {parameter}={named!r}, what is sent, billed and recorded: pass it as "
                f"{parameter}=... only",
            )


def check_request_for_style(request: GenerationRequest, api_style: str, dialect: str | None = None) -> None:
    """What a request validated without knowing the API must also satisfy for ``api_style``."""
    from airflow_provider_imggen.model_table import check_endpoint

    if api_style != "dashscope":
        if request.endpoint is not None:
            raise ImageGenerationValidationError(
                "endpoint",
                request.endpoint,
                "chooses between DashScope's native endpoints (connection api_style 'dashscope'); an "
                "OpenAI-compatible gateway has one endpoint and picks the upstream one itself: leave it "
                "unset",
            )
        if dialect == "nested":
            check_extra_body(request.extra_body, api_style, dialect)
        if request.images:
            raise ImageGenerationValidationError(
                "images",
                [image.record()["uri"] for image in request.images],
                "input images go to DashScope's native endpoints (connection api_style 'dashscope'): the "
                "OpenAI-compatible /v1/images/generations takes text only",
            )
    if api_style == "dashscope":
        check_endpoint(request.model, request.endpoint)
        if request.response_format != "url":
            raise ImageGenerationValidationError(
                "response_format",
                request.response_format,
                "DashScope's native task API returns result URLs only: use 'url'",
            )
        check_extra_body(request.extra_body, api_style)


def check_input_count(spec: Any, images: tuple[InputImage, ...], given: object) -> None:
    """The number of input images ``spec``'s model takes (before any is read)."""
    if spec.min_input_images <= len(images) <= spec.max_input_images:
        return
    shown = [image.record()["uri"] for image in images] if images else given
    raise ImageGenerationValidationError("images", shown, f"{spec.describe_input_count()}, got {len(images)}")


def _check_text(parameter: str, value: object, limit: int | None, model: str, *, required: bool) -> str:
    if not isinstance(value, str):
        raise ImageGenerationValidationError(parameter, value, "expected a string")
    if required and not value.strip():
        raise ImageGenerationValidationError(parameter, value, "must not be empty")
    if required and value.strip() in RENDERED_MISSING_VALUES:
        raise ImageGenerationValidationError(
            parameter,
            value,
            "looks like a template that rendered a missing value (a dag_run.conf key or param that was "
            "not set): pass the text to draw",
        )
    if limit is not None and len(value) > limit:
        raise ImageGenerationValidationError(
            parameter, value, f"{model} accepts at most {limit} characters, got {len(value)}"
        )
    return value


def validate_generation_request(
    *, api_style: object = None, dialect: object = None, images_known: bool = True, **arguments: object
) -> GenerationRequest:
    """
    Validate one image generation request against the model table and normalise it.

    Strings are accepted wherever a rendered template would produce one (``n="2"``, ``seed="42"``,
    ``prompt_upsampling="false"``); sizes may use ``x`` or ``*``.

    :param api_style: ``openai`` or ``dashscope`` when known: the native API also protects its own
        names in ``extra_body``, returns URLs only and has two endpoints
    :param dialect: the gateway's dialect (``openai`` or ``nested``) when known
    :param images_known: False when ``images`` is not known yet (a template or an XCom, at DAG-parse time):
        their count is checked once rendered
    :param arguments: the request's parameters, by name: those of :class:`GenerationRequest` (``prompt``
        and ``model`` required), with its defaults

    :raises ImageGenerationValidationError: naming the parameter, the value and what is allowed
    """
    # The model table is imported here, not with the module: records.py reads the request's parameter list
    # from this module on the transfer's DAG-parse path, which needs no table.
    from airflow_provider_imggen.model_table import (
        ENDPOINTS,
        GENERIC_MAX_N,
        KNOWN_MODELS,
        check_endpoint,
        spec_of,
    )

    unknown = sorted(set(arguments) - set(REQUEST_PARAMETERS))
    if unknown:
        raise ImageGenerationValidationError(
            unknown[0],
            arguments[unknown[0]],
            f"not a request parameter: expected {', '.join(REQUEST_PARAMETERS)}",
        )
    prompt, model = arguments.get("prompt"), arguments.get("model")
    n, size = arguments.get("n", 1), arguments.get("size")
    response_format = arguments.get("response_format", "url")
    negative_prompt, prompt_upsampling = arguments.get("negative_prompt"), arguments.get("prompt_upsampling")
    seed, extra_body = arguments.get("seed"), arguments.get("extra_body")
    watermark, endpoint = arguments.get("watermark"), arguments.get("endpoint")
    if not isinstance(model, str) or not model.strip():
        raise ImageGenerationValidationError(
            "model", model, f"expected a model name, e.g. one of {', '.join(KNOWN_MODELS)}"
        )
    model = model.strip()
    spec = spec_of(model)

    checked_prompt = _check_text(
        "prompt", prompt, spec.max_prompt_chars if spec else None, model, required=True
    )
    checked_negative = None
    if negative_prompt is not None:
        checked_negative = _check_text(
            "negative_prompt",
            negative_prompt,
            spec.max_negative_prompt_chars if spec else None,
            model,
            required=False,
        )

    max_n = spec.max_n if spec else GENERIC_MAX_N
    n_allowed = f"{model} accepts n=1 only" if max_n == 1 else f"{model} accepts a whole number 1-{max_n}"
    checked_n = coerce_int("n", n, n_allowed)
    if not 1 <= checked_n <= max_n:
        raise ImageGenerationValidationError("n", n, n_allowed)

    checked_size = None
    if size is not None and spec is not None and not spec.size_settable:
        raise ImageGenerationValidationError(
            "size", size, f"{model} makes its image at its input's size: leave size unset"
        )
    if size is not None:
        width, height = parse_size(size)
        if spec is not None:
            if width < 1 or height < 1 or not spec.size_allowed(width, height):
                raise ImageGenerationValidationError("size", size, spec.describe_sizes())
        elif width < 1 or height < 1:
            raise ImageGenerationValidationError("size", size, "width and height must be positive")
        checked_size = f"{width}x{height}"

    if response_format not in RESPONSE_FORMATS:
        raise ImageGenerationValidationError(
            "response_format", response_format, "expected 'url' or 'b64_json'"
        )

    checked_upsampling = (
        None if prompt_upsampling is None else coerce_bool("prompt_upsampling", prompt_upsampling)
    )

    checked_seed = None
    if seed is not None:
        seed_allowed = f"expected a whole number 0-{MAX_SEED} (an int or a string of digits)"
        checked_seed = coerce_int("seed", seed, seed_allowed)
        if not 0 <= checked_seed <= MAX_SEED:
            raise ImageGenerationValidationError("seed", seed, seed_allowed)

    if isinstance(extra_body, dict) and "watermark" in extra_body and watermark is None:
        # Before it was a parameter, watermark could only travel in extra_body: still read from there.
        extra_body = dict(extra_body)
        watermark = extra_body.pop("watermark")
    checked_watermark = None if watermark is None else coerce_bool("watermark", watermark)
    if endpoint is not None and endpoint not in ENDPOINTS:
        check_endpoint(model, endpoint)  # raises, naming the endpoints
    checked_extra = check_extra_body(
        extra_body,
        api_style if isinstance(api_style, str) else None,
        dialect if isinstance(dialect, str) else None,
    )

    checked_images = parse_input_images(arguments.get("images"))
    if spec is not None and images_known:
        check_input_count(spec, checked_images, arguments.get("images"))
    if images_known and not checked_images and "bbox_list" in checked_extra:
        raise ImageGenerationValidationError(
            "extra_body['bbox_list']",
            checked_extra["bbox_list"],
            "boxes for a targeted edit name regions of the input images: pass images=...",
        )

    request = GenerationRequest(
        model=model,
        prompt=checked_prompt,
        n=checked_n,
        size=checked_size,
        response_format=response_format,  # type: ignore[arg-type]
        negative_prompt=checked_negative,
        prompt_upsampling=checked_upsampling,
        seed=checked_seed,
        extra_body=checked_extra,
        watermark=checked_watermark,
        endpoint=endpoint,  # type: ignore[arg-type]
        images=checked_images,
    )
    _check_nested_values(request)
    if isinstance(api_style, str):
        checked_dialect = dialect if isinstance(dialect, str) else None
        check_request_for_style(request, api_style, checked_dialect)
        return dataclasses.replace(request, validated_for=(api_style, checked_dialect))
    if endpoint is not None:
        check_endpoint(model, endpoint)
    return request


def ensure_validated_for(
    request: GenerationRequest, api_style: str, dialect: str | None
) -> GenerationRequest:
    """
    ``request``, checked against the connection's API unless it was validated for that API already (the
    operator validates literal arguments at parse time, without the connection), and marked so: a request
    is validated once per send, not once per layer it passes through.
    """
    if request.validated_for == (api_style, dialect):
        return request
    check_request_for_style(request, api_style, dialect)
    return dataclasses.replace(request, validated_for=(api_style, dialect))
