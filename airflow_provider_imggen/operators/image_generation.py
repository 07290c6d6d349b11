"""Operator generating images from a (templated) prompt."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from airflow.providers.common.compat.sdk import ResumableJobMixin
from airflow.sdk import BaseOperator
from airflow.sdk.configuration import conf

# What execute needs (events, XCom building, the task record, the deferral) is imported in the methods that
# use it: every DAG-file parse imports this module.
from airflow_provider_imggen import DEFAULT_CONN_ID
from airflow_provider_imggen.budgets.limits import parse_budgets
from airflow_provider_imggen.exceptions import (
    ImageGenerationOutcomeUnknownError,
    ImageGenerationTaskFailedError,
)
from airflow_provider_imggen.operators import arguments, native_task
from airflow_provider_imggen.operators.arguments import PROMPT_TEMPLATE_EXTENSIONS
from airflow_provider_imggen.operators.quota_wait import (
    DEFAULT_THROTTLE_TIMEOUT,
    QuotaWait,
    log_unknown_outcome,
)
from airflow_provider_imggen.request import REQUEST_PARAMETERS, GenerationRequest

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import Context
    from airflow.sdk.definitions.mappedoperator import OperatorPartial
    from pydantic import JsonValue

    from airflow_provider_imggen.billing_journal import BillingJournal
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook, TaskState
    from airflow_provider_imggen.operators.ledger_reuse import LedgerGate

_T = TypeVar("_T")


class ImageGenerationOperator(ResumableJobMixin, BaseOperator):
    r"""
    Generate images from a text prompt and push their metadata (never their bytes) to XCom.

    Every request parameter is validated against the model's limits before anything billable is sent:
    literal values when the DAG is parsed (``__init__``, and ``.partial()`` for mapped tasks), rendered
    values before the request. A bad value fails the task at once, without Airflow retries, naming the
    parameter, the value and what is allowed. The ``s3_key`` templates of the
    ``ImageGenerationToS3Operator`` tasks storing this task's XCom are checked before anything is billed
    too.

    The XCom ``return_value`` is a :class:`~airflow_provider_imggen.records.GenerationRecord` as a dict:
    the request's parameters, ``images`` (signed URLs masked in ``url`` and sealed with Airflow's Fernet key
    in ``url_sealed``, or ``location``/``bytes``/``sha256``), ``failed_images``, the native task's
    ``generation_task_id``/``task_status``, ``warnings``, and the ledger's ``ledger_fingerprint``/``reused``.

    Every billable request's intent and outcome go to the task state store first (``imggen_billing``), and
    a native task's id too (``imggen_task``): a retry reconnects to what an earlier try paid for, returns
    what it delivered, or fails without an Airflow retry when nothing proves what happened (docs/money.md).
    Throttled submissions (nothing billed) are sent again until ``throttle_timeout``. The manual:
    docs/generating.md, docs/asynchronous.md and docs/quotas-and-scale.md.

    :param prompt: what to draw, or a template file ending in .txt, .j2 or .jinja (templated)
    :param model: model name; defaults to the connection's ``default_model`` (templated)
    :param images: input images for the models that edit (qwen-image-edit*, qwen-image-2.0*,
        wan2.5-i2i-preview, wan2.6-image, wan2.7-image*): ``s3://`` URIs (read with ``aws_conn_id``),
        ``ObjectStoragePath`` objects, https URLs (fetched under the connection's result-URL policy) or
        ``ImageGenerationToS3Operator``'s XCom, in order. Each is read and checked (format, bytes,
        dimensions, and the sha256 a stored image's record carries) before anything is billed, then sent
        inline or as a short-lived URL; XCom records their URIs and sha256 as ``input_images`` (templated)
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
    :param reuse: with a billing ledger on the connection (extra ``ledger``), reuse the images of the same
        request (model, every parameter, seed, account) already stored in S3, verified by their sha256:
        nothing is billed and the XCom says ``reused``. ``False`` pays for new images
    :param budget: limits on what this task's sends may spend, checked (and reserved) before each billable
        send across every worker, with the connection extra ``budget``'s: ``{"dag_run": 10,
        "dag_per_day": "50 CNY", "connection_per_day": "200 USD"}`` (README, "Budgets"). Needs the
        connection extra ``ledger``, where the spending is kept
    :param aws_conn_id: the aws connection that reads ``s3://`` input images, and stored images back to
        verify them before reuse
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

    # Every parameter of the request, then the operator's own.
    template_fields: Sequence[str] = (
        *REQUEST_PARAMETERS,
        "imggen_conn_id",
        "request_timeout",
        "output_path",
        "throttle_timeout",
    )
    template_ext: Sequence[str] = PROMPT_TEMPLATE_EXTENSIONS
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "extra_body": "json",
        "images": "json",
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
        images: Any = None,
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
        reuse: bool = True,
        aws_conn_id: str | None = "aws_default",
        budget: dict[str, int | str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.model = model
        self.images = images
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
        self.wait_timeout = arguments.wait_timeout_seconds(wait_timeout)
        self.wait_for_completion = wait_for_completion
        self.throttle_timeout = throttle_timeout
        self.end_from_trigger = end_from_trigger
        self.watermark = watermark
        self.endpoint = endpoint
        self.reuse = reuse
        self.aws_conn_id = aws_conn_id
        self.budget = budget
        parse_budgets("budget", budget, origin="operator")  # bad limits fail at DAG parse
        arguments.check_literal_arguments(
            {name: getattr(self, name) for name in (*self.template_fields, *arguments.UNTEMPLATED_CHECKED)}
        )
        # Set while this try knows a native task (on_kill cancels it) and what it submitted.
        self._generation_task_id: str | None = None
        self._request: GenerationRequest | None = None
        self._state: TaskState | None = None
        self._metadata_result: dict[str, Any] | None = None
        # Why the trigger's code could not load the connection in this worker (checked before submitting).
        self._trigger_connection_problem: str | None = None
        self._quota: QuotaWait | None = None
        # What this task instance's tries sent and what came of it (the task state store's, when durable).
        self._journal: BillingJournal | None = None
        self._ledger_gate: LedgerGate | None = None
        self._input_images: tuple[Any, ...] = ()  # read for this try: OpenLineage's input datasets
        self._deferred_spend: dict[str, Any] | None = None

    @classmethod
    def partial(cls, **kwargs: Any) -> OperatorPartial:
        """
        As :meth:`BaseOperator.partial`, with the literal arguments checked now, when the DAG is parsed.

        A mapped task's operator is only created on the worker: without this, ``n=8`` would fail there.
        """
        arguments.check_literal_arguments(kwargs)
        return super().partial(**kwargs)

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        """
        Render, then tell the secrets masker the query values of URL inputs: rendered fields are stored in
        the metadata database and shown in the UI, and a signed input URL's query is a credential.
        """
        super().render_template_fields(context, jinja_env)
        if self.images:
            from airflow_provider_imggen.transfers.sources import mask_url_credentials

            mask_url_credentials(self.images)

    @cached_property
    def hook(self) -> ImageGenerationHook:
        from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

        return ImageGenerationHook(
            imggen_conn_id=self.imggen_conn_id, request_timeout=arguments.parse_timeout(self.request_timeout)
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

        Also where a quota wait in the triggerer resumes: ``event`` is then the ``DateTimeTrigger``'s
        (unused), and the try's deadline and count of throttled submissions come back (``QuotaWait``).
        """
        from airflow_provider_imggen.billing_journal import TaskStateJournal, billing_journal
        from airflow_provider_imggen.operators.downstream_keys import check_downstream_keys
        from airflow_provider_imggen.operators.ledger_reuse import LedgerGate

        request, output_path = self._prepare_request(context)
        # The storage tasks' keys: an unknown placeholder would fail them after the images were billed.
        check_downstream_keys(self)
        self._quota = QuotaWait(
            self.throttle_timeout,
            self.log,
            started=getattr(context["ti"], "start_date", None),
            deadline=throttle_deadline,
            throttled=throttled_submissions,
        )
        endpoint = self.hook.endpoint_for(request)
        self._open_budgets(context)
        # Before anything is sent: what earlier tries of this task instance may have paid for, and what the
        # ledger (across runs) holds of this request.
        self._journal = billing_journal(context, durable=self.durable, log=self.log)
        gate = LedgerGate.open(
            hook=self.hook,
            request=request,
            ti=context["ti"],
            reuse=self.reuse,
            aws_conn_id=self.aws_conn_id,
            log=self.log,
            waits=self.wait_for_completion,
            durable_journal=isinstance(self._journal, TaskStateJournal),
        )
        if gate is None:
            return self._generate(endpoint, request, output_path, context)
        self._ledger_gate = gate
        return gate.generate_through(
            self._journal, lambda: self._generate(endpoint, request, output_path, context)
        )

    def _generate(
        self, endpoint: str, request: GenerationRequest, output_path: str | None, context: Context
    ) -> dict[str, Any]:
        """Generate on ``endpoint``: the XCom."""
        if endpoint == "async":
            self._request = request
            # Reconnects to the task an earlier try submitted, or submits one, then waits (see the class).
            return self.execute_resumable(context)

        arguments.check_synchronous(
            endpoint,
            request,
            wait_for_completion=self.wait_for_completion,
            deferrable=self.deferrable,
            conn_id=self.imggen_conn_id,
            log=self.log,
        )
        from airflow_provider_imggen.operators.answered import generate_answered

        return generate_answered(self, request, output_path, context["ti"])

    def execute_complete(
        self,
        context: Context,
        event: dict[str, Any],
        request: dict[str, Any] | None = None,
        spend: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        Resume after the trigger's event: read the task's results once (URLs never travel in events).

        Not called when the trigger ended the task itself (``end_from_trigger``, on success).
        """
        from airflow_provider_imggen.events import (
            event_generation_task_id,
            raise_for_event,
            trigger_could_not_read_connection,
        )

        if not isinstance(event, Mapping):
            raise_for_event(event, waited=self.wait_timeout)
        # The request as submitted travels in the deferral's kwargs. `airflow dags test` hands back only
        # the event: the request is then prepared again, as execute() did (same rendering, same seed).
        self._request = GenerationRequest(**request) if request else self._prepare_request(context)[0]
        generation_task_id = str(event_generation_task_id(event))
        self._generation_task_id = generation_task_id
        self._deferred_spend = spend  # which send created the task, when the journal cannot say
        try:
            self._open_budgets(context)
        except Exception as error:  # the task is paid for: its results are delivered all the same
            self.log.warning("Could not open this task's budgets to settle them: %s", error)
        if context.get("task_state_store") is not None and self.durable:
            from airflow_provider_imggen.billing_journal import TaskStateJournal

            self._journal = TaskStateJournal(context["task_state_store"])  # when it was sent: the latency
        self.log.info(
            "Resumed on the worker: the trigger reported task %s %s", generation_task_id, event.get("status")
        )
        if event.get("status") == "timeout":
            self._cancel_pending(generation_task_id)
        if trigger_could_not_read_connection(event, self.log, self.imggen_conn_id, generation_task_id):
            # This worker read the connection to submit: wait here rather than fail a paid generation.
            return self._wait_in_worker(generation_task_id)
        raise_for_event(event, waited=self.wait_timeout)
        return self._task_metadata(self.hook.get_task(generation_task_id))

    def _prepare_request(self, context: Context) -> tuple[GenerationRequest, str | None]:
        """
        The rendered request, validated, with its seed and its input images read; and where ``b64_json``
        images go. Inputs are read before the ledger and the journal: the request is known by their sha256
        (the first try's, which every later try expects: :mod:`~airflow_provider_imggen.inputs.remembered`).
        """
        request, output_path = arguments.rendered_request(self, self.hook, context["ti"], self.log)
        if request.images:
            from airflow_provider_imggen.inputs.remembered import read_with_memory

            request = read_with_memory(
                request,
                store=context.get("task_state_store") if self.durable else None,
                aws_conn_id=self.aws_conn_id,
                imggen_conn_id=self.imggen_conn_id,
                log=self.log,
            )
            self._input_images = request.images
        return request, output_path

    def on_kill(self) -> None:
        # Closing the session aborts the request in flight.
        if "hook" in self.__dict__:
            self.hook.close()
        if self._generation_task_id is not None and self.wait_for_completion:
            self._cancel_pending(self._generation_task_id)

    def get_openlineage_facets_on_complete(self, task_instance: object) -> Any:
        """Input datasets: the input images an edit read (S3 objects, files, URLs without their query)."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        from airflow_provider_imggen.inputs.references import lineage_dataset

        datasets = [lineage_dataset(image) for image in self._input_images]
        return OperatorLineage(inputs=[Dataset(namespace=space, name=name) for space, name in datasets])

    # -- the native task, through ResumableJobMixin (operators/native_task.py) --------------------------

    def submit_job(self, context: Context) -> JsonValue:
        return native_task.submit_job(self, context)

    def get_job_status(self, external_id: JsonValue, context: Context) -> str:
        return native_task.get_job_status(self, external_id, context)

    def is_job_active(self, status: str) -> bool:
        return native_task.is_job_active(self, status)

    def is_job_succeeded(self, status: str) -> bool:
        return native_task.is_job_succeeded(self, status)

    def poll_until_complete(self, external_id: JsonValue, context: Context) -> Any:
        return native_task.poll_until_complete(self, external_id, context)

    def _wait_in_worker(self, generation_task_id: str) -> dict[str, Any]:
        return native_task.wait_in_worker(self, generation_task_id)

    def get_job_result(self, external_id: JsonValue, context: Context) -> dict[str, Any]:
        return native_task.get_job_result(self, external_id, context)

    # -- the one billable request: quota waits and unknown outcomes ---------------------------------------

    def _billable(self, send: Callable[[], _T], request: GenerationRequest, *, deferrable: bool) -> _T:
        """
        Send the billable request, waiting out the service's quota until the deadline (see the class).

        Deferrable, a wait defers to a ``DateTimeTrigger`` and resumes in :meth:`execute`, which renders
        and validates the request again (the same request: same rendering, same seed) before sending it.
        """
        assert self._quota is not None, "execute() starts the quota wait's clock"
        try:
            defer = functools.partial(self._quota.defer_in_triggerer, self) if deferrable else None
            return self._quota.send(send, defer=defer, min_deferral=self.min_throttle_deferral)
        except ImageGenerationOutcomeUnknownError as error:
            log_unknown_outcome(self.log, error, request)
            raise

    # -- XCom --------------------------------------------------------------------------------------------

    @property
    def _submitting_request(self) -> GenerationRequest:
        if self._request is None:
            raise RuntimeError("execute() validates the request before any task is submitted")
        return self._request

    def _task_metadata(self, state: TaskState) -> dict[str, Any]:
        """The XCom of a finished task; raises for FAILED, CANCELED, UNKNOWN or no image at all."""
        from airflow_provider_imggen.metadata import request_fields, task_metadata
        from airflow_provider_imggen.operators.ledger_reuse import with_ledger_fingerprint
        from airflow_provider_imggen.operators.task_spending import send_of_task, settle_task

        request = self._submitting_request
        sent = send_of_task(self._journal, state.generation_task_id, self._deferred_spend)
        try:
            # The same call the trigger makes when it ends the task (end_from_trigger): one XCom either way.
            metadata = task_metadata(self.hook, state, request_fields(request))
        except ImageGenerationTaskFailedError:
            settle_task(self.hook, request, state, 0, self.log, sent=sent)
            raise
        settle_task(self.hook, request, state, len(metadata["images"]), self.log, sent=sent)
        # Resumed in a new process after a deferral: the transfer records the images under this key.
        return with_ledger_fingerprint(metadata, self.hook, self._submitting_request)

    def _open_budgets(self, context: Context) -> None:
        """The budgets this task's sends reserve in (the hook's one billable send checks them)."""
        from airflow_provider_imggen.budgets.guard import BudgetGuard

        self.hook.budget_guard = BudgetGuard.open(
            operator_budget=self.budget,
            settings=self.hook.settings,
            ti=context["ti"],
            log=self.log,
        )

    def _cancel_pending(self, generation_task_id: str) -> None:
        """Cancel the task if it is still PENDING (nothing is billed then); never raises."""
        from airflow_provider_imggen.operators import task_record

        task_record.cancel_pending(
            self.imggen_conn_id, generation_task_id, self.__dict__.get("hook"), self.log
        )
