"""
The operator's arguments: literal values checked when the DAG is parsed, rendered values read for the request.

Pure in-memory work, no Airflow import: ``ImageGenerationOperator.__init__`` (and ``.partial``) run these
whenever a DAG file is parsed, and mapped operators are re-created on workers through ``__init__``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.coercion import check_flag, coerce_seconds
from airflow_provider_imggen.exceptions import ImageGenerationValidationError, ResultUrlSealError
from airflow_provider_imggen.model_table import ENDPOINTS
from airflow_provider_imggen.operators.quota_wait import parse_throttle_timeout
from airflow_provider_imggen.operators.task_record import size_as_0_1_sent
from airflow_provider_imggen.polling import check_poll_settings
from airflow_provider_imggen.request import (
    MAX_SEED,
    REQUEST_PARAMETERS,
    GenerationRequest,
    validate_generation_request,
)

if TYPE_CHECKING:
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

PROMPT_TEMPLATE_EXTENSIONS = (".txt", ".j2", ".jinja")
# A seed the operator picks leaves room for seed + i on each of up to 10 images.
_PICKED_SEED_RANGE = MAX_SEED - 16
# The request's parameters checked as literals here, each with the neutral value (its default) standing in
# for a template; the prompt, extra_body and endpoint have rules of their own below.
_REQUEST_PLACEHOLDERS: dict[str, object] = {
    item.name: None if item.default is dataclasses.MISSING else item.default
    for item in dataclasses.fields(GenerationRequest)
    if item.name in REQUEST_PARAMETERS and item.name not in ("prompt", "extra_body", "endpoint", "images")
}
# Checked as literals in the operator's __init__ besides its templated fields.
UNTEMPLATED_CHECKED = (
    "reuse",
    "deferrable",
    "wait_for_completion",
    "end_from_trigger",
    "poll_interval",
    "max_poll_interval",
    "wait_timeout",
)
_FLAGS = ("deferrable", "wait_for_completion", "end_from_trigger", "reuse")


def check_literal_arguments(arguments: Mapping[str, Any]) -> None:
    """
    Check the arguments that are already final, so a broken DAG shows an import error.

    ``arguments`` maps parameter names to the values given. A templated value (or an XComArg) is checked
    after rendering; a name missing from ``arguments`` (a ``.partial()`` whose ``.expand()`` gives it) is
    not checked here: ``__init__`` checks it when the mapped task is created on the worker.
    """

    def literal(name: str, placeholder: object = None) -> object:
        value = arguments.get(name, placeholder)
        return value if is_literal(value) else placeholder

    checked = {name: literal(name, placeholder) for name, placeholder in _REQUEST_PLACEHOLDERS.items()}
    prompt = arguments.get("prompt", "templated prompt")
    if not is_literal(prompt) or (isinstance(prompt, str) and prompt.endswith(PROMPT_TEMPLATE_EXTENSIONS)):
        prompt = "templated prompt"
    # Without a literal model the connection's default applies; only the model-independent rules hold.
    literal_model = checked.pop("model")
    extra_body = literal("extra_body")
    if isinstance(extra_body, str):
        extra_body = parse_extra_body(extra_body)
    endpoint = none_if_blank(literal("endpoint"))
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise ImageGenerationValidationError(
            "endpoint", endpoint, "expected 'async' (the task API), 'sync' (multimodal generation) or None"
        )
    # Input images given literally are parsed (and counted against a literal model) now; a template, an
    # XCom or a .partial() expanded later, once rendered.
    images = arguments.get("images")
    images_known = "images" in arguments and is_literal(images)
    validate_generation_request(
        prompt=prompt,
        model=literal_model or "model-from-connection",
        extra_body=extra_body,
        # Whether the endpoint serves the model is only known with the model.
        endpoint=endpoint if literal_model else None,
        images=images if images_known else None,
        images_known=images_known and literal_model is not None,
        **checked,
    )
    if "request_timeout" in arguments and is_literal(arguments["request_timeout"]):
        parse_timeout(arguments["request_timeout"])
    if "throttle_timeout" in arguments and is_literal(arguments["throttle_timeout"]):
        parse_throttle_timeout(arguments["throttle_timeout"])
    output_path = arguments.get("output_path")
    if checked["response_format"] == "b64_json" and "output_path" in arguments and is_literal(output_path):
        check_output_path(output_path)
    for flag in _FLAGS:
        if flag in arguments:
            check_flag(flag, arguments[flag])
    if all(name in arguments for name in ("poll_interval", "max_poll_interval", "wait_timeout")):
        check_poll_settings(
            arguments["poll_interval"],
            arguments["max_poll_interval"],
            wait_timeout_seconds(arguments["wait_timeout"]),
            timeout_name="wait_timeout",
            allow_zero_timeout=False,
        )


def wait_timeout_seconds(value: object) -> Any:
    """``wait_timeout`` as given (seconds, a timedelta or None), in seconds."""
    return value.total_seconds() if isinstance(value, timedelta) else value


def check_output_path(output_path: object) -> str:
    """Where ``b64_json`` images go: an absolute path or a URI, without its trailing slash."""
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


def is_literal(value: object) -> bool:
    """Whether a constructor argument is final: not a Jinja template and not a lazy XCom reference."""
    if isinstance(value, str):
        return "{{" not in value and "{%" not in value
    if isinstance(value, (dict, list, tuple)):
        items = value.values() if isinstance(value, dict) else value
        return all(is_literal(item) for item in items)
    return value is None or isinstance(value, (int, float, bool))


def none_if_blank(value: object) -> Any:
    """A template that rendered to nothing ("" or "None") means the parameter was not given."""
    return None if value is None or (isinstance(value, str) and value.strip() in ("", "None")) else value


def parse_timeout(value: object) -> float | None:
    """``request_timeout``: finite seconds > 0 (NaN and infinity refused), or None for the connection's."""
    if none_if_blank(value) is None:
        return None
    return coerce_seconds("request_timeout", value)


def parse_extra_body(value: str) -> object:
    """extra_body rendered from a whole-value template arrives as a JSON string."""
    try:
        return json.loads(value)
    except ValueError:
        raise ImageGenerationValidationError(
            "extra_body", value, "expected a dict, or a string holding a JSON object"
        ) from None


def derived_seed(ti: Any, request: GenerationRequest) -> int:
    """A seed stable for this task instance and prompt: retries and re-runs give the same images."""
    # A size left unset hashes as the size 0.1.0 sent for it, so the seeds (and with them the requests a
    # retry compares with the task it already paid for) stay those of earlier versions.
    size = request.size or size_as_0_1_sent(request.model)
    identity = json.dumps(
        [ti.dag_id, ti.run_id, ti.task_id, ti.map_index, request.model, request.prompt, size]
    )
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big") % _PICKED_SEED_RANGE


def rendered_request(
    operator: Any, hook: ImageGenerationHook, ti: Any, log: Any
) -> tuple[GenerationRequest, str | None]:
    """The operator's rendered request, validated, with its seed; and where ``b64_json`` images go."""
    # Every parameter of the request, as rendered: a value rendered blank means "not set".
    rendered = {name: none_if_blank(getattr(operator, name)) for name in REQUEST_PARAMETERS}
    rendered["prompt"] = operator.prompt
    if isinstance(operator.extra_body, str):
        rendered["extra_body"] = parse_extra_body(operator.extra_body)
    request = hook.validate_request(**rendered)
    output_path = None
    if request.response_format == "b64_json":
        output_path = check_output_path(operator.output_path)
    if request.seed is None:
        request = dataclasses.replace(request, seed=derived_seed(ti, request))
        log.info(
            "No seed given: using seed=%d (derived from this task instance and the prompt)", request.seed
        )
    return request, output_path


def check_synchronous(
    endpoint: str,
    request: GenerationRequest,
    *,
    wait_for_completion: object,
    deferrable: object,
    conn_id: str,
    log: Any,
) -> None:
    """
    Before a synchronous request (the gateway, DashScope's synchronous endpoint): what it cannot do.

    There is no task to come back to, so ``wait_for_completion=False`` is refused and ``deferrable`` has
    no effect; its result URLs cannot be read again, so a worker that cannot seal them refuses to pay.
    """
    from airflow_provider_imggen.sealed_urls import NO_KEY_HELP, can_seal

    api = (
        "the OpenAI-compatible API (connection api_style 'openai')"
        if endpoint == "gateway"
        else f"DashScope's synchronous endpoint (which serves {request.model})"
    )
    if not wait_for_completion:
        raise ImageGenerationValidationError(
            "wait_for_completion",
            False,
            f"{api[0].upper()}{api[1:]} answers with the images, there is no task to come back to: leave "
            "wait_for_completion=True" + (", or use api_style 'dashscope'" if endpoint == "gateway" else ""),
        )
    if deferrable:
        log.info(
            "deferrable=True has no effect with %s (connection %r): it answers with the images in one "
            "request and has no task the triggerer could wait on, so the images are generated in this worker",
            api,
            conn_id,
        )
    if request.response_format == "url" and not can_seal():
        # These URLs cannot be read again later (no task to read them from): without a key to seal them
        # for the transfer, the images would be paid for and unusable. Refuse before anything is billed.
        raise ResultUrlSealError(
            f"The result URLs of {api} are credentials: XCom shows them masked and keeps them sealed with "
            f"Airflow's Fernet key, and this worker has no usable key. Nothing was sent or billed; "
            f"{NO_KEY_HELP}. (response_format='b64_json' with an output_path needs no key)"
        )
