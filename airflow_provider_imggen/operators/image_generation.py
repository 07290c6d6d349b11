"""Operator generating images from a (templated) prompt."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from airflow.providers.common.compat.sdk import ResumableJobMixin
from airflow.sdk import BaseOperator
from airflow.sdk.configuration import conf

from airflow_provider_imggen.connections import trigger_connection_problem
from airflow_provider_imggen.exceptions import (
    ImageGenerationOutcomeUnknownError,
    ImageGenerationThrottledError,
    ImageGenerationValidationError,
    ResultUrlSealError,
)
from airflow_provider_imggen.metadata import (
    event_generation_task_id,
    generation_metadata,
    raise_for_event,
    request_fields,
    task_metadata,
    trigger_could_not_read_connection,
)
from airflow_provider_imggen.models import (
    ENDPOINTS,
    MAX_SEED,
    TASK_ACTIVE_STATUSES,
    GenerationRequest,
    check_flag,
    check_poll_settings,
    check_request_for_style,
    coerce_seconds,
    default_size_of,
    validate_generation_request,
)
from airflow_provider_imggen.sealed_urls import NO_KEY_HELP, can_seal
from airflow_provider_imggen.throttling import (
    DEFAULT_THROTTLE_TIMEOUT,
    next_throttle_wait,
    parse_throttle_timeout,
)

if TYPE_CHECKING:
    from airflow.sdk import Context
    from pydantic import JsonValue

    from airflow_provider_imggen.hooks.image_generation import (
        ImageGenerationHook,
        ImageGenerationResult,
        TaskState,
    )

DEFAULT_CONN_ID = "imggen_default"
PROMPT_TEMPLATE_EXTENSIONS = (".txt", ".j2", ".jinja")
# A seed the operator picks leaves room for seed + i on each of up to 10 images.
_PICKED_SEED_RANGE = MAX_SEED - 16
# The defer timeout leaves the trigger this long past its own deadline to report "timeout" itself.
_DEFER_GRACE_SECONDS = 120.0
# SUSPENDED counts as still running: an earlier try's suspended task is reconnected to, not paid again.
_ACTIVE_STATUSES = TASK_ACTIVE_STATUSES
_T = TypeVar("_T")


class ImageGenerationOperator(ResumableJobMixin, BaseOperator):
    """
    Generate images from a text prompt and push their metadata (never their bytes) to XCom.

    Every request parameter is validated against the model's limits before anything billable is sent:
    literal values when the DAG is parsed, rendered values before the request. A bad value fails the task
    at once, without Airflow retries, naming the parameter, the value and what is allowed.

    The XCom ``return_value`` is a JSON-serialisable dict: ``model``, ``prompt``, ``negative_prompt``,
    ``size``, ``n``, ``seed``, ``response_format``, ``prompt_upsampling``, ``created`` (epoch),
    ``created_at`` (ISO 8601), ``request_id``, ``usage``, ``images``: a list of ``{index, seed, url,
    url_sealed, url_expires_at, revised_prompt, location, bytes, sha256}``, ``failed_images``: a list of
    ``{index, code, message}`` (images of a native task that failed while the others succeeded),
    ``generation_task_id`` and ``task_status`` (the native task, ``None`` with the OpenAI-compatible API;
    ``generation_task_id`` is the API's task, never to be confused with the Airflow task's ``task_id``);
    see :class:`~airflow_provider_imggen.records.GenerationRecord`. A signed result URL is a credential:
    ``url`` shows it with every query value masked, ``url_sealed`` holds it encrypted with Airflow's Fernet
    key, and the task registers its secrets with the secrets masker (README, "Security model"). With the
    OpenAI-compatible API and ``response_format="url"``, a worker without a Fernet key fails before
    anything is billed. Result URLs expire (about 24 h): store the images with
    ``ImageGenerationToS3Operator``.

    **Native task API** (connection ``api_style`` ``dashscope``): ``execute()`` submits the task (the one
    billable request, never sent from a trigger), then waits for it: with ``deferrable=True`` in the
    triggerer (:class:`~airflow_provider_imggen.triggers.image_generation.ImageGenerationTaskTrigger`),
    freeing the worker slot, otherwise by polling in the worker. The XCom has the same shape either way.
    The generation task id is kept in Airflow's task state store (``ResumableJobMixin``, Airflow 3.3+)
    under ``imggen_task`` (``{generation_task_id, request_sha256, submitted_at}``) before the wait
    starts, so a retry after a worker crash, a timeout or a failed status read reconnects to the task it
    already paid for instead of submitting again (a record written before the rename, with ``task_id``,
    is read too):

    * task PENDING, RUNNING or SUSPENDED: wait for it again; SUCCEEDED: take its results (nothing is
      sent);
    * FAILED or CANCELED: nothing was billed for it, so a new task is submitted;
    * UNKNOWN (task ids live 24 h): its results can no longer be fetched, so a new task is submitted;
    * the rendered request differs from the one that was submitted: a new task is submitted.

    Clearing a finished task re-runs it the same way: within 24 h it takes the results already paid for
    (the seed is the same, so a new request would draw the same images); change the seed for new ones.
    ``on_kill`` cancels a task that is still PENDING (a RUNNING task cannot be canceled: a retry
    reconnects to it). A FAILED task, a task whose every image failed, and an unknown task fail without
    Airflow retries, with the API's code and message; images that failed in a task that succeeded are
    logged one by one and listed in ``failed_images``, and the others are delivered.

    **Quotas.** The service limits submissions per second and concurrent tasks per account and model
    (2 and 2 for qwen-image and wan2.2 on the native API). The hook retries a throttled request (HTTP 429,
    nothing billed) a few times; when it gives up, the operator waits and submits again until
    ``throttle_timeout`` has passed since the try started: as long as the service's ``Retry-After`` says,
    otherwise with a jittered exponential backoff (1-2 s, widening to 120 s). With ``deferrable=True`` a
    wait of 10 s or more (``min_throttle_deferral``) happens in the triggerer (a ``DateTimeTrigger``; the
    worker slot is free meanwhile), a shorter one in the worker, as all waits without it. Past the
    deadline the task fails with :class:`ImageGenerationThrottledError`, which Airflow may retry: nothing
    was billed. To stay within the concurrent-task quota at all, run the tasks in an Airflow pool of that
    many slots that counts deferred tasks (README, "Quotas").

    **Outcome unknown.** A submission whose answer was lost after it was sent (a 5xx, a timeout, a dropped
    connection) may have been billed. The hook looks the task up in the service's task list and reconnects
    to it when exactly one matches (the operator then waits for it as usual); otherwise the task fails with
    :class:`ImageGenerationOutcomeUnknownError`, without Airflow retries, its log naming what may have
    been billed.

    **OpenAI-compatible API** (``api_style`` ``openai``) **and DashScope's synchronous endpoint**
    (``multimodal-generation/generation``: qwen-image-max and the qwen-image 2.0 family, or
    ``endpoint="sync"``): one synchronous request answered with the images. There is no task to wait for,
    so ``deferrable=True`` (often set for a whole deployment through ``[operators] default_deferrable``)
    runs synchronously and logs that it does; ``wait_for_completion=False`` is refused.

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
    :param watermark: ask the service to mark the images; None leaves the service's default (no mark).
        Sent as ``watermark`` (top level, or under ``parameters`` with the gateway dialect ``nested`` and
        on the native API) (templated)
    :param endpoint: DashScope's endpoint (connection ``api_style`` ``dashscope``): ``async`` (the task
        API) or ``sync`` (multimodal generation); None uses the model's (README, "Models"). A model asked
        for on an endpoint that does not serve it fails before anything is sent (templated)
    :param imggen_conn_id: the ``imggen`` connection (templated)
    :param request_timeout: read timeout of the request in seconds; defaults to the connection's
        (templated)
    :param output_path: where ``b64_json`` images are written: an object-storage URI understood by
        :class:`airflow.sdk.ObjectStoragePath` (``file:///data/images``, ``s3://aws_default@bucket/prefix``).
        Files are named ``<dag_id>/<run_id>/<task_id>/[<map_index>-]<index>.png`` below it (templated).
        The native task API returns URLs only: with it, ``response_format`` must be ``url``
    :param deferrable: wait for a native task in the triggerer instead of the worker; defaults to
        ``[operators] default_deferrable``
    :param poll_interval: seconds between status reads of a native task at first
    :param max_poll_interval: longest wait between status reads; after 30 s of polling every
        ``poll_interval``, the wait doubles up to this
    :param wait_timeout: give up waiting for a native task after this long (seconds or a timedelta):
        a task still PENDING is canceled, and the task fails (an Airflow retry reconnects to a task that
        is running). ``None`` waits until the task ends; the API ends or forgets every task within 24 h
    :param wait_for_completion: ``False`` submits the native task and returns at once: the XCom carries
        its ``generation_task_id`` (and no images) for :class:`~airflow_provider_imggen.sensors.
        image_generation.ImageGenerationTaskSensor` to wait on
    :param throttle_timeout: seconds (from the start of the try) during which a submission the service
        throttled is sent again after a wait; 0 fails at the first throttling (templated)
    :param durable: keep the submitted task id in Airflow's task state store so that a retry reconnects
        to it (Airflow 3.3 and later; on earlier versions every try submits)
    :param end_from_trigger: with ``deferrable=True``, a generation that succeeds ends the task in the
        triggerer, which pushes the XCom the worker would (built by the same code, pushed the same way):
        one worker run per generation instead of two. Failures, timeouts and unreadable statuses still
        resume on the worker and raise as without it (a FAILED generation is never retried). Off by
        default, as in Airflow's own operators: a task ended in the triggerer gets no asset events for its
        ``outlets``, no listener (OpenLineage) notifications (Airflow refuses to load such a DAG when a
        listener plugin is installed) and no ``post_execute``, and the triggerer then runs the XCom
        backend (README, "Running at scale"). With ``outlets`` or a mapped downstream task, the worker
        finishes the task anyway. No effect without a deferred wait (the OpenAI-compatible API,
        ``wait_for_completion=False``)
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
        "throttle_timeout",
        "watermark",
        "endpoint",
    )
    template_ext: Sequence[str] = PROMPT_TEMPLATE_EXTENSIONS
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "extra_body": "json",
        "prompt": "txt",
        "negative_prompt": "txt",
    }
    ui_color = "#e8d8ff"
    # Where the submitted task is remembered across tries. Renaming it orphans the tasks of running tries.
    external_id_key = "imggen_task"
    # Deferrable, a quota wait shorter than this sleeps in the worker instead: a deferral round trip costs
    # about as much worker time, and a trigger firing within seconds of the deferral meets an Airflow race
    # that fails the task (the executor's stale event of the defer exit, apache/airflow#67287).
    min_throttle_deferral: ClassVar[float] = 10.0

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
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 3.0,
        max_poll_interval: float = 30.0,
        wait_timeout: timedelta | float | None = None,
        wait_for_completion: bool = True,
        throttle_timeout: float | str = DEFAULT_THROTTLE_TIMEOUT,
        end_from_trigger: bool = False,
        watermark: bool | str | None = None,
        endpoint: str | None = None,
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
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        if isinstance(wait_timeout, timedelta):
            wait_timeout = wait_timeout.total_seconds()
        self.wait_timeout = wait_timeout
        self.wait_for_completion = wait_for_completion
        self.throttle_timeout = throttle_timeout
        self.end_from_trigger = end_from_trigger
        self.watermark = watermark
        self.endpoint = endpoint
        self._validate_literal_arguments()
        check_flag("deferrable", deferrable)
        check_flag("wait_for_completion", wait_for_completion)
        check_flag("end_from_trigger", end_from_trigger)
        check_poll_settings(
            poll_interval,
            max_poll_interval,
            self.wait_timeout,
            timeout_name="wait_timeout",
            allow_zero_timeout=False,
        )
        # Set while this try knows a native task (on_kill cancels it) and what it submitted.
        self._generation_task_id: str | None = None
        self._request: GenerationRequest | None = None
        self._state: TaskState | None = None
        self._metadata_result: dict[str, Any] | None = None
        # Why the trigger's code could not load the connection in this worker (checked before submitting).
        self._trigger_connection_problem: str | None = None
        # This try's quota waits: the deadline (epoch seconds) and how many throttled submissions so far.
        self._throttle_deadline: float | None = None
        self._throttled_submissions = 0

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
                ("watermark", None),
            )
        }
        prompt = self.prompt
        if not _is_literal(prompt) or (
            isinstance(prompt, str) and prompt.endswith(PROMPT_TEMPLATE_EXTENSIONS)
        ):
            prompt = "templated prompt"
        # Without a literal model the connection's default applies; only the model-independent rules hold.
        literal_model = checked.pop("model")
        model = literal_model or "model-from-connection"
        extra_body: object = self.extra_body if _is_literal(self.extra_body) else None
        if isinstance(extra_body, str):
            extra_body = _parse_extra_body(extra_body)
        endpoint = _none_if_blank(self.endpoint) if _is_literal(self.endpoint) else None
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ImageGenerationValidationError(
                "endpoint",
                endpoint,
                "expected 'async' (the task API), 'sync' (multimodal generation) or None",
            )
        validate_generation_request(
            prompt=prompt,
            model=model,
            extra_body=extra_body,
            # Whether the endpoint serves the model is only known with the model.
            endpoint=endpoint if literal_model else None,
            **checked,
        )
        if _is_literal(self.request_timeout):
            _parse_timeout(self.request_timeout)
        if _is_literal(self.throttle_timeout):
            parse_throttle_timeout(self.throttle_timeout)
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

    def execute(
        self,
        context: Context,
        event: Any = None,
        throttle_deadline: float | None = None,
        throttled_submissions: int = 0,
    ) -> dict[str, Any]:
        """
        Generate: submit (or reconnect to) a native task and wait for it, or ask the gateway.

        Also where a quota wait in the triggerer resumes (``event`` is then the trigger's, unused): the
        deadline and the count of throttled submissions come back in the deferral's kwargs.

        :param context: the task's context
        :param event: the ``DateTimeTrigger``'s event when resuming from a quota wait
        :param throttle_deadline: when resuming, the try's deadline (epoch seconds); otherwise it is
            ``throttle_timeout`` after the try's start date (which deferrals keep)
        :param throttled_submissions: when resuming, how many submissions were throttled so far (it widens
            the backoff)
        """
        request, output_path = self._prepare_request(context)
        # The rule the hook applies too (one function): checked here before the state store is read.
        check_request_for_style(request, self.hook.settings.api_style, self.hook.settings.gateway_dialect)
        self._start_throttle_clock(context, throttle_deadline, throttled_submissions)
        endpoint = self.hook.endpoint_for(request)
        if endpoint == "async":
            self._request = request
            # Reconnects to the task an earlier try submitted, or submits one, then waits (see the class).
            return self.execute_resumable(context)

        api = (
            "the OpenAI-compatible API (connection api_style 'openai')"
            if endpoint == "gateway"
            else f"DashScope's synchronous endpoint (which serves {request.model})"
        )
        if not self.wait_for_completion:
            raise ImageGenerationValidationError(
                "wait_for_completion",
                False,
                f"{api[0].upper()}{api[1:]} answers with the images, there is no task to come back to: leave "
                "wait_for_completion=True"
                + (", or use api_style 'dashscope'" if endpoint == "gateway" else ""),
            )
        if self.deferrable:
            self.log.info(
                "deferrable=True has no effect with %s (connection %r): it answers with the images in one "
                "request and has no task the triggerer could wait on, so the images are generated in this "
                "worker",
                api,
                self.imggen_conn_id,
            )
        if request.response_format == "url" and not can_seal():
            # These URLs cannot be read again later (no task to read them from): without a key to seal them
            # for the transfer, the images would be paid for and unusable. Refuse before anything is billed.
            raise ResultUrlSealError(
                f"The result URLs of {api} are credentials: XCom shows them masked and keeps "
                "them sealed with Airflow's Fernet key, and this worker has no usable key. Nothing was "
                f"sent or billed; {NO_KEY_HELP}. (response_format='b64_json' with an output_path needs "
                "no key)"
            )
        # The gateway answers synchronously: its quota waits happen in the worker, whatever deferrable says.
        result = self._billable(lambda: self.hook.generate(request), request, deferrable=False)
        return self._metadata(result, request, output_path, context)

    def execute_complete(
        self, context: Context, event: dict[str, Any], request: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """
        Resume after the trigger's event: read the task's results once (URLs never travel in events).

        Not called when the trigger ended the task itself (``end_from_trigger``, on success).
        """
        if not isinstance(event, Mapping):
            raise_for_event(event, waited=self.wait_timeout)
        # The request as submitted travels in the deferral's kwargs. `airflow dags test` hands back only
        # the event: the request is then prepared again, as execute() did (same rendering, same seed).
        self._request = GenerationRequest(**request) if request else self._prepare_request(context)[0]
        generation_task_id = str(event_generation_task_id(event))
        self._generation_task_id = generation_task_id
        self.log.info(
            "Resumed on the worker: the trigger reported task %s %s",
            generation_task_id,
            event.get("status"),
        )
        if event.get("status") == "timeout":
            self._cancel_pending(generation_task_id)
        if trigger_could_not_read_connection(event, self.log, self.imggen_conn_id, generation_task_id):
            # This worker read the connection to submit: wait here rather than fail a paid generation.
            return self._wait_in_worker(generation_task_id)
        raise_for_event(event, waited=self.wait_timeout)
        return self._task_metadata(self.hook.get_task(generation_task_id))

    def _prepare_request(self, context: Context) -> tuple[GenerationRequest, str | None]:
        """The rendered request, validated, with its seed; and where b64_json images go."""
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
            watermark=_none_if_blank(self.watermark),
            endpoint=_none_if_blank(self.endpoint),
        )
        output_path = None
        if request.response_format == "b64_json":
            output_path = self._check_output_path(self.output_path)
        if request.seed is None:
            request = dataclasses.replace(request, seed=self._derived_seed(context, request))
            self.log.info(
                "No seed given: using seed=%d (derived from this task instance and the prompt)", request.seed
            )
        return request, output_path

    def on_kill(self) -> None:
        # Closing the session aborts the request in flight.
        if "hook" in self.__dict__:
            self.hook.close()
        if self._generation_task_id is not None and self.wait_for_completion:
            self._cancel_pending(self._generation_task_id)

    # -- the native task, through ResumableJobMixin -----------------------------------------------------

    def submit_job(self, context: Context) -> JsonValue:
        request = self._submitting_request
        if self.deferrable and self.wait_for_completion:
            # Before anything is billed: a wait the trigger could not do would otherwise start after it.
            self._trigger_connection_problem = trigger_connection_problem(self.imggen_conn_id)
            if self._trigger_connection_problem is not None:
                self.log.warning(
                    "The trigger's code cannot read connection %r here (%s): this generation will wait in "
                    "the worker instead of deferring",
                    self.imggen_conn_id,
                    self._trigger_connection_problem,
                )
        submitted = self._billable(lambda: self.hook.submit(request), request, deferrable=self.deferrable)
        self._generation_task_id = submitted.generation_task_id
        self.log.info(
            "Submitted task %s (request_id=%s): model=%s n=%d size=%s seed=%s",
            submitted.generation_task_id,
            submitted.request_id,
            request.model,
            request.n,
            request.size,
            request.seed,
        )
        return {
            "generation_task_id": submitted.generation_task_id,
            "request_sha256": _fingerprint(request),
            "submitted_at": datetime.now(tz=UTC).isoformat(),
        }

    def get_job_status(self, external_id: JsonValue, context: Context) -> str:
        """The remembered task's status, or a pseudo-status saying why it cannot be reused."""
        generation_task_id = _remembered_generation_task_id(external_id)
        remembered = external_id if isinstance(external_id, Mapping) else {}
        if generation_task_id is None:
            self.log.warning("Ignoring an unreadable task record from an earlier try: %r", external_id)
            return "UNREADABLE"
        if remembered.get("request_sha256") != _fingerprint(self._submitting_request):
            self.log.info(
                "An earlier try submitted task %s for other parameters (the rendered request changed): "
                "submitting this request",
                generation_task_id,
            )
            return "SUPERSEDED"
        state = self.hook.get_task(generation_task_id)
        self._generation_task_id, self._state = generation_task_id, state
        if state.status in ("FAILED", "CANCELED"):
            self.log.warning(
                "Task %s, submitted by an earlier try at %s, ended %s (code=%s: %s); nothing was billed "
                "for it, so a new task is submitted",
                generation_task_id,
                remembered.get("submitted_at"),
                state.status,
                state.code,
                state.message,
            )
        elif state.status == "UNKNOWN":
            self.log.warning(
                "Task %s, submitted by an earlier try at %s, is unknown to the API: it expired (task ids "
                "live 24 h) or was never created there. Its results cannot be fetched any more, so a new "
                "task is submitted",
                generation_task_id,
                remembered.get("submitted_at"),
            )
        elif state.status == "SUCCEEDED":
            self.log.info(
                "Task %s, submitted by an earlier try, already succeeded: using its results",
                generation_task_id,
            )
        else:
            self.log.info(
                "Task %s, submitted by an earlier try, is %s: reconnecting to it instead of submitting again",
                generation_task_id,
                state.status,
            )
        return state.status

    def is_job_active(self, status: str) -> bool:
        return status in _ACTIVE_STATUSES

    def is_job_succeeded(self, status: str) -> bool:
        return status == "SUCCEEDED"

    def poll_until_complete(self, external_id: JsonValue, context: Context) -> Any:
        """
        Wait for the task: defer to the triggerer, or poll here; return the XCom metadata.

        ResumableJobMixin returns this method's value as the task's result when it reconnects to a task
        that is still running, so it returns the metadata (and keeps it for :meth:`get_job_result`).
        """
        generation_task_id = _remembered_generation_task_id(external_id) or str(external_id)
        self._generation_task_id = generation_task_id
        if not self.wait_for_completion:
            self._metadata_result = self._submitted_metadata(generation_task_id)
            return self._metadata_result
        if self.deferrable and self._trigger_connection_problem is None:
            self._defer(generation_task_id)
        self._metadata_result = self._wait_in_worker(generation_task_id)
        return self._metadata_result

    def _wait_in_worker(self, generation_task_id: str) -> dict[str, Any]:
        """Poll the task from this worker until it ends: its XCom (a timeout cancels it while PENDING)."""
        from airflow_provider_imggen.exceptions import ImageGenerationTaskTimeoutError

        try:
            state = self.hook.wait_for_task(
                generation_task_id,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                timeout=self.wait_timeout,
            )
        except ImageGenerationTaskTimeoutError:
            self._cancel_pending(generation_task_id)
            raise
        return self._task_metadata(state)

    def get_job_result(self, external_id: JsonValue, context: Context) -> dict[str, Any]:
        if self._metadata_result is not None:
            return self._metadata_result
        # The earlier try's task already SUCCEEDED: get_job_status read its state.
        assert self._state is not None
        return self._task_metadata(self._state)

    def _defer(self, generation_task_id: str) -> None:
        from airflow_provider_imggen.triggers.image_generation import ImageGenerationTaskTrigger

        ends_in_triggerer = self._ends_in_triggerer()
        self.log.info(
            "Deferring until task %s ends (the worker slot is free meanwhile)%s",
            generation_task_id,
            "; on success the triggerer ends this task with its XCom" if ends_in_triggerer else "",
        )
        self.defer(
            trigger=ImageGenerationTaskTrigger(
                generation_task_id=generation_task_id,
                imggen_conn_id=self.imggen_conn_id,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                end_time=time.time() + self.wait_timeout if self.wait_timeout is not None else None,
                # This task paid for it: a user killing the deferred task cancels it while still PENDING.
                cancel_on_kill=True,
                end_from_trigger=ends_in_triggerer,
                # The trigger only has the task id: the XCom's request fields come from here.
                request_fields=request_fields(self._submitting_request) if ends_in_triggerer else None,
                do_xcom_push=self.do_xcom_push,
                multiple_outputs=self.multiple_outputs,
            ),
            method_name="execute_complete",
            kwargs={"request": dataclasses.asdict(self._submitting_request)},
            timeout=timedelta(seconds=self.wait_timeout + _DEFER_GRACE_SECONDS)
            if self.wait_timeout is not None
            else None,
        )

    def _ends_in_triggerer(self) -> bool:
        """Whether the trigger may end this task on success (``end_from_trigger``, where Airflow allows)."""
        if not self.end_from_trigger:
            return False
        reason = self._worker_must_finish()
        if reason is not None:
            self.log.info("end_from_trigger: the worker finishes this task after all: %s", reason)
            return False
        return True

    def _worker_must_finish(self) -> str | None:
        """What only a worker finishing the task does and this task needs; None when nothing."""
        if self.outlets:
            return "it has outlets, whose asset events Airflow records only when a worker finishes a task"
        if self.has_dag() and next(self.iter_mapped_dependants(), None) is not None:
            return (
                "a mapped task downstream expands over its XCom, whose length Airflow records only when a "
                "worker pushes it"
            )
        return None

    # -- quota waits and unknown outcomes around the one billable request -------------------------------

    def _start_throttle_clock(
        self, context: Context, carried_deadline: float | None, throttled_submissions: int
    ) -> None:
        """
        Fix this try's ``throttle_timeout`` deadline: carried across a quota deferral, else from the start.

        The try's start date survives deferrals too (``airflow dags test`` hands a resumed task only the
        event, not the deferral's kwargs), so the deadline holds either way.
        """
        timeout = parse_throttle_timeout(self.throttle_timeout)
        self._throttled_submissions = throttled_submissions if isinstance(throttled_submissions, int) else 0
        if isinstance(carried_deadline, int | float) and not isinstance(carried_deadline, bool):
            self._throttle_deadline = float(carried_deadline)
            return
        started = getattr(context["ti"], "start_date", None)
        start = started.timestamp() if isinstance(started, datetime) else time.time()
        self._throttle_deadline = start + timeout

    def _billable(self, send: Callable[[], _T], request: GenerationRequest, *, deferrable: bool) -> _T:
        """
        Send the billable request, waiting out the service's quota until the deadline (see the class).

        Deferrable, a wait defers to a ``DateTimeTrigger`` and resumes in :meth:`execute`, which renders
        and validates the request again (the same request: same rendering, same seed) before sending it.
        """
        while True:
            try:
                return send()
            except ImageGenerationThrottledError as error:
                self._throttled_submissions += 1
                wait = self._wait_after_throttling(error)
            except ImageGenerationOutcomeUnknownError as error:
                self.log.error(
                    "The outcome of the billable request is unknown (request_id=%s, sent at %s): up to %s "
                    "image(s) of %s may have been billed. Neither the hook nor Airflow sends it again; "
                    "check the account's usage (and, on the native API, its task list) before running "
                    "this task again",
                    error.request_id,
                    error.submitted_at.isoformat() if error.submitted_at else "an unknown time",
                    error.images_at_risk if error.images_at_risk is not None else request.n,
                    error.model or request.model,
                )
                raise
            if deferrable and wait >= self.min_throttle_deferral:
                self._defer_quota_wait(wait)
            time.sleep(wait)

    def _wait_after_throttling(self, error: ImageGenerationThrottledError) -> float:
        """The wait before submitting again; re-raises ``error`` when the deadline allows none."""
        assert self._throttle_deadline is not None, "execute() starts the throttle clock"
        remaining = self._throttle_deadline - time.time()
        wait = next_throttle_wait(error.retry_after, self._throttled_submissions, remaining)
        if wait is None:
            self.log.error(
                "The service throttled submission %d (code=%s, retry_after=%s s) and throttle_timeout=%ss "
                "leaves no time for another (%.0f s left): failing this try. Nothing was billed, so an "
                "Airflow retry is safe",
                self._throttled_submissions,
                error.code,
                error.retry_after,
                self.throttle_timeout,
                max(remaining, 0.0),
            )
            raise error
        self.log.warning(
            "The service throttled submission %d (code=%s): nothing was billed. Submitting again in %.1f s "
            "(%s); %.0f s left of throttle_timeout=%ss",
            self._throttled_submissions,
            error.code,
            wait,
            "as its Retry-After asks" if error.retry_after else "jittered backoff",
            remaining,
            self.throttle_timeout,
        )
        return wait

    def _defer_quota_wait(self, wait: float) -> None:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        self.log.info("Waiting out the quota in the triggerer (the worker slot is free meanwhile)")
        self.defer(
            trigger=DateTimeTrigger(moment=datetime.now(tz=UTC) + timedelta(seconds=wait)),
            method_name="execute",
            kwargs={
                "throttle_deadline": self._throttle_deadline,
                "throttled_submissions": self._throttled_submissions,
            },
        )

    @property
    def _submitting_request(self) -> GenerationRequest:
        if self._request is None:
            raise RuntimeError("execute() validates the request before any task is submitted")
        return self._request

    def _task_metadata(self, state: TaskState) -> dict[str, Any]:
        """The XCom of a finished task; raises for FAILED, CANCELED, UNKNOWN or no image at all."""
        # The same call the trigger makes when it ends the task (end_from_trigger): one XCom either way.
        return task_metadata(self.hook, state, **request_fields(self._submitting_request))

    def _submitted_metadata(self, generation_task_id: str) -> dict[str, Any]:
        """The XCom of a task submitted without waiting: its id and the request, no images yet."""
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationResult

        request = self._submitting_request
        status = self._state.status if self._state is not None else "PENDING"
        self.log.info(
            "Not waiting for task %s (%s): wait for it with ImageGenerationTaskSensor",
            generation_task_id,
            status,
        )
        result = ImageGenerationResult(
            created=int(time.time()),
            images=(),
            usage={},
            request_id=None,
            model=request.model,
            parameters=request.to_dashscope_body(),
        )
        return self._metadata(
            result, request, None, None, generation_task_id=generation_task_id, task_status=status
        )

    def _cancel_pending(self, generation_task_id: str) -> None:
        """Cancel the task if it is still PENDING (nothing is billed then); never raises."""
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

        # A hook of its own: on_kill runs in a signal handler, possibly in the middle of a request on
        # this operator's session. It takes the connection already loaded, if any, rather than asking the
        # supervisor for it again from the handler.
        hook = ImageGenerationHook(imggen_conn_id=self.imggen_conn_id, request_timeout=10.0, max_retries=1)
        loaded = self.__dict__.get("hook")
        if loaded is not None and "connection" in loaded.__dict__:
            hook.__dict__["connection"] = loaded.connection
        try:
            if hook.cancel_task(generation_task_id):
                self.log.info(
                    "Canceled task %s: it was still PENDING, nothing is billed for it", generation_task_id
                )
            else:
                self.log.info(
                    "Task %s could not be canceled (no longer PENDING): a retry reconnects to it",
                    generation_task_id,
                )
        except Exception as error:
            self.log.warning("Could not cancel task %s: %s", generation_task_id, error)
        finally:
            hook.close()

    def _derived_seed(self, context: Context, request: GenerationRequest) -> int:
        """A seed stable for this task instance and prompt: retries and re-runs give the same images."""
        ti = context["ti"]
        # The size the service will draw at: a size left unset hashes as the model's default, as it did when
        # the provider sent that default itself, so seeds stay those of earlier versions.
        size = request.size or default_size_of(request.model)
        identity = json.dumps(
            [ti.dag_id, ti.run_id, ti.task_id, ti.map_index, request.model, request.prompt, size]
        )
        return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big") % _PICKED_SEED_RANGE

    def _metadata(
        self,
        result: ImageGenerationResult,
        request: GenerationRequest,
        output_path: str | None,
        context: Context | None,
        *,
        generation_task_id: str | None = None,
        task_status: str | None = None,
    ) -> dict[str, Any]:
        files = {
            image.index: self._write_image(image.data, image.index, output_path, context)
            for image in result.images
            if image.data is not None and output_path is not None and context is not None
        }
        return generation_metadata(
            result,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            size=request.size,
            n=request.n,
            seed=request.seed,
            response_format=request.response_format,
            prompt_upsampling=request.prompt_upsampling,
            files=files,
            generation_task_id=generation_task_id,
            task_status=task_status,
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


def _remembered_generation_task_id(external_id: object) -> str | None:
    """
    The generation task id in a record of the task state store, or None when it is unreadable.

    The key was ``task_id`` before the rename: a try that started on an older version of this provider
    and is retried after the upgrade still reconnects to the task it paid for.
    """
    if not isinstance(external_id, Mapping):
        return None
    generation_task_id = external_id.get("generation_task_id", external_id.get("task_id"))
    return generation_task_id if isinstance(generation_task_id, str) and generation_task_id else None


def _fingerprint(request: GenerationRequest) -> str:
    """Identifies what a task was submitted for, so a retry only reuses a task of the same request."""
    body = json.dumps(request.to_dashscope_body(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


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
    # Finite seconds > 0 (NaN and infinity refused), from a number or an ASCII numeric string.
    return coerce_seconds("request_timeout", value)


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
