"""Operator generating one image request per prompt, sent from the triggerer at the account's pace."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_imggen import DEFAULT_CONN_ID
from airflow_provider_imggen.exceptions import ImageGenerationError, ImageGenerationValidationError

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
    from airflow_provider_imggen.request import GenerationRequest
    from airflow_provider_imggen.triggers.image_generation_batch import ImageGenerationBatchTrigger

# Requests of one batch: their bodies travel in the trigger's kwargs (the metadata DB) and their records
# in one XCom.
MAX_PROMPTS = 1000
# Task ids live 24 hours: a batch still waiting then cannot read its tasks any more.
DEFAULT_BATCH_TIMEOUT = 86400.0
MIN_POLL_INTERVAL = 0.05
DERIVED_SEED_SPAN = 2_000_000_000
_PER_PROMPT = ("prompt", "seed", "negative_prompt")


class ImageGenerationBatchIncompleteError(ImageGenerationError):
    """
    Some requests of a batch were not delivered, and a retry may deliver them (never sent, still running at
    the timeout, unreadable for now). The XCom carries those that were; ``problems`` names the others. A
    retry resumes from the ledger and sends only what was never sent.
    """


class ImageGenerationBatchFailedError(ImageGenerationBatchIncompleteError, AirflowFailException):
    """
    Some requests of a batch were not delivered, each for good (refused, billed and failed, outcome
    unknown): a retry could only report them again, so Airflow does not retry.
    """


# Problems an Airflow retry may clear: everything else a batch reports is final.
RETRYABLE_PROBLEMS = frozenset({"not_sent", "timeout", "unreadable", "recovery_failed"})


class ImageGenerationBatchOperator(BaseOperator):
    """
    Generate one request per prompt on DashScope's native task API, sending them from the triggerer.

    One worker run validates and renders every request, then defers once: the trigger
    (:class:`~airflow_provider_imggen.triggers.image_generation_batch.ImageGenerationBatchTrigger`) sends
    them at the account's pace (submissions per second and tasks at once, from the model table unless
    given), each only after winning its claim in the connection's billing ledger, reads every task from the
    moment it is expected to end, and ends the task from the triggerer with the XCom: no worker slot is
    held while the images are drawn, and nothing is sent twice under one claim, however many copies of the
    trigger run.

    The XCom ``return_value`` is a list with one generation record per delivered request, in prompt order
    (the shape of :class:`~airflow_provider_imggen.operators.image_generation.ImageGenerationOperator`'s
    XCom), which :class:`~airflow_provider_imggen.transfers.image_generation_to_s3.
    ImageGenerationToS3Operator` takes as ``generation``. A request whose task failed without billing is
    sent again (up to ``max_task_failures``); one billed and failed, refused (its content, a bad
    parameter) or whose outcome is unknown is reported, never sent again: the task then fails with
    :class:`ImageGenerationBatchIncompleteError` after pushing what was delivered, and its ``problems``
    XCom names the others.

    Needs the connection's ``api_style`` ``dashscope`` and its ``ledger`` (docs/quotas-and-scale.md).

    :param prompts: the prompts (templated): a list of texts, or of dicts with ``prompt`` and optionally
        ``seed`` and ``negative_prompt`` for that request
    :param model: model name; defaults to the connection's ``default_model`` (templated)
    :param n: images per request (templated)
    :param size: ``WxH`` or ``W*H``; the model's default when omitted (templated)
    :param negative_prompt: what to avoid, for every request without its own (templated)
    :param seed: the seed of every request without its own; omitted, each request gets one derived from
        the task instance and its prompt, so a retry sends the very same requests (templated)
    :param imggen_conn_id: the ``imggen`` connection
    :param submissions_per_second: the account's submission rate for the model (default: the model table's)
    :param concurrent_tasks: the account's concurrent tasks for the model (default: the model table's)
    :param over_quota: what the service does with a task beyond the concurrency quota: ``probe`` (find out
        with one submission), ``queue`` or ``refuse``
    :param status_queries_per_second: this batch's share of the account's 20 status queries per second
    :param poll_interval: the slowest status read before a task's end can be predicted, in seconds
    :param max_task_failures: tasks of one request that may fail without billing before it is reported
    :param batch_timeout: seconds after which what is not done is reported (None: no limit)
    :param end_from_trigger: end the task from the triggerer when every request is delivered
    :param budget: refused (with the connection extra budget): the batch's sends happen in the trigger, which
        does not reserve in budgets yet; map ImageGenerationOperator over the prompts instead
    """

    template_fields: Sequence[str] = (
        "prompts",
        "model",
        "n",
        "size",
        "negative_prompt",
        "seed",
        "imggen_conn_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"prompts": "json"}
    ui_color = "#c9e4ff"

    def __init__(
        self,
        *,
        prompts: Any,
        model: str | None = None,
        n: Any = 1,
        size: str | None = None,
        negative_prompt: str | None = None,
        seed: Any = None,
        imggen_conn_id: str = DEFAULT_CONN_ID,
        submissions_per_second: float | None = None,
        concurrent_tasks: int | None = None,
        over_quota: str = "probe",
        status_queries_per_second: float = 10.0,
        poll_interval: float = 1.0,
        max_task_failures: int = 3,
        throttle_timeout: float = 3600.0,
        batch_timeout: float | None = DEFAULT_BATCH_TIMEOUT,
        end_from_trigger: bool = True,
        budget: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Taken (from default_args too) only to be refused: the trigger's sends do not reserve yet.
        self.budget = budget
        from airflow_provider_imggen.batch.pacing import OVER_QUOTA_MODES

        if over_quota not in OVER_QUOTA_MODES:
            raise ImageGenerationValidationError(
                "over_quota", over_quota, f"one of {', '.join(OVER_QUOTA_MODES)}"
            )
        for name, value in (
            ("submissions_per_second", submissions_per_second),
            ("status_queries_per_second", status_queries_per_second),
            ("poll_interval", poll_interval),
            ("throttle_timeout", throttle_timeout),
            ("batch_timeout", batch_timeout),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                raise ImageGenerationValidationError(name, value, "a number of seconds (or per second) > 0")
        for name, value in (("concurrent_tasks", concurrent_tasks), ("max_task_failures", max_task_failures)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ImageGenerationValidationError(name, value, "a whole number >= 1")
        self.prompts = prompts
        self.model = model
        self.n = n
        self.size = size
        self.negative_prompt = negative_prompt
        self.seed = seed
        self.imggen_conn_id = imggen_conn_id
        self.submissions_per_second = submissions_per_second
        self.concurrent_tasks = concurrent_tasks
        self.over_quota = over_quota
        self.status_queries_per_second = status_queries_per_second
        self.poll_interval = poll_interval
        if poll_interval < MIN_POLL_INTERVAL:
            raise ImageGenerationValidationError(
                "poll_interval", poll_interval, f"seconds >= {MIN_POLL_INTERVAL}"
            )
        if status_queries_per_second > 20:
            raise ImageGenerationValidationError(
                "status_queries_per_second", status_queries_per_second, "at most the account's 20 per second"
            )
        self.max_task_failures = max_task_failures
        self.throttle_timeout = throttle_timeout
        self.batch_timeout = batch_timeout
        self.end_from_trigger = end_from_trigger

    def execute(self, context: Context) -> None:
        from datetime import timedelta

        from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

        hook = ImageGenerationHook(self.imggen_conn_id)
        if hook.settings.budgets or self.budget:
            from airflow_provider_imggen.exceptions import ImageGenerationValidationError

            # Its sends happen in the trigger, which does not reserve yet: refused rather than unbudgeted.
            raise ImageGenerationValidationError(
                "budget" if self.budget else f"connection {self.imggen_conn_id!r} extra budget",
                self.budget or ", ".join(budget.describe() for budget in hook.settings.budgets),
                "ImageGenerationBatchOperator does not enforce budgets yet: map ImageGenerationOperator "
                "over the prompts on a connection with a budget (nothing was sent)",
            )
        trigger = self.batch_trigger(hook, context["ti"])
        self.log.info(
            "Deferring %d request(s) to the triggerer: %g submissions/s, %s at once",
            len(trigger.requests),
            trigger.submissions_per_second,
            trigger.concurrent_tasks,
        )
        # The trigger gives up at batch_timeout itself; the deferral's timeout only backs it up.
        timeout = None if self.batch_timeout is None else timedelta(seconds=self.batch_timeout + 600)
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timeout)

    def batch_trigger(self, hook: ImageGenerationHook, ti: Any) -> ImageGenerationBatchTrigger:
        """The trigger that sends this task instance's requests: each validated, with its ledger slot."""
        import time

        from airflow_provider_imggen.ledger import make_owner
        from airflow_provider_imggen.triggers.image_generation_batch import ImageGenerationBatchTrigger

        settings = hook.settings
        if settings.api_style != "dashscope":
            raise ImageGenerationValidationError(
                "api_style",
                settings.api_style,
                f"'dashscope' on connection {self.imggen_conn_id!r} for a batch",
            )
        if settings.ledger is None:
            raise ImageGenerationValidationError(
                "ledger",
                None,
                f"a ledger on connection {self.imggen_conn_id!r} (its claims keep the triggerer from sending "
                "a request twice): s3://<aws_conn_id>@<bucket>/<prefix> or postgres://<conn_id>/<table>",
            )
        requests = self._all_requests(hook, ti)
        rate, concurrent = self._quota(requests[0].model)
        return ImageGenerationBatchTrigger(
            requests=self._slots(hook, ti),
            owner=make_owner(ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.try_number),
            imggen_conn_id=self.imggen_conn_id,
            submissions_per_second=rate,
            concurrent_tasks=concurrent,
            status_queries_per_second=self.status_queries_per_second,
            over_quota=self.over_quota,
            poll_interval=self.poll_interval,
            max_task_failures=self.max_task_failures,
            end_time=time.time() + self.batch_timeout if self.batch_timeout else None,
            end_from_trigger=self.end_from_trigger,
            do_xcom_push=self.do_xcom_push,
            throttle_timeout=self.throttle_timeout,
        )

    def execute_complete(self, context: Context, event: Any) -> list[dict[str, Any]] | None:
        """
        Resume after the trigger's event (not called when the trigger ended the task itself): read each
        delivered task's results once (URLs never travel in events), push them, and fail naming what was
        not delivered.
        """
        import time

        from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook
        from airflow_provider_imggen.metadata import task_metadata
        from airflow_provider_imggen.sealed_urls import registered_together

        tasks, keys, problems = _read_event(event)
        hook = ImageGenerationHook(self.imggen_conn_id)
        ti = context["ti"]
        # Paired by slot, not position: what this worker renders again is matched to what was sent.
        recorded = {slot["key"]: slot["recorded"] for slot in self._slots(hook, ti)}
        records = []
        with registered_together():  # the URLs' secrets: one pattern for the batch, not one per URL
            for index, (task_id, key) in enumerate(zip(tasks, keys, strict=True)):
                if task_id is None:
                    continue
                time.sleep(1 / self.status_queries_per_second)  # within the account's status-query limit
                try:
                    records.append(task_metadata(hook, hook.get_task(task_id), recorded.get(key)))
                except ImageGenerationError as error:
                    problems.append(
                        {
                            "index": index,
                            "status": "unknown",
                            "code": "unreadable",
                            "reason": type(error).__name__,
                            "billed": True,
                            "generation_task_id": task_id,
                        }
                    )
        self.log.info(
            "Batch: %d delivered, %d problem(s); %s sent, %s throttled, %s recovered; the service %s beyond "
            "the concurrency quota",
            len(records),
            len(problems),
            event.get("sent"),
            event.get("throttled"),
            event.get("recovered"),
            {"queue": "queues", "refuse": "refuses"}.get(str(event.get("over_quota")), "was not asked"),
        )
        if not problems:
            return records if self.do_xcom_push else None
        if self.do_xcom_push:
            ti.xcom_push(key="return_value", value=records)
            ti.xcom_push(key="problems", value=problems)
        for problem in problems:
            self.log.error(
                "Request %s: %s (%s): %s",
                problem.get("index"),
                problem.get("status"),
                problem.get("code"),
                problem.get("reason"),
            )
        retryable = any(problem.get("code") in RETRYABLE_PROBLEMS for problem in problems)
        failure = ImageGenerationBatchIncompleteError if retryable else ImageGenerationBatchFailedError
        raise failure(
            f"{len(problems)} of {len(tasks)} request(s) not delivered ({len(records)} delivered, in the "
            "XCom; the others in the 'problems' XCom)"
            + ("" if retryable else ": each for good, so Airflow does not retry")
        )

    # -- requests -----------------------------------------------------------------------------------------

    def _prompt_list(self) -> list[Any]:
        prompts = self.prompts
        if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence) or not prompts:
            raise ImageGenerationValidationError(
                "prompts",
                type(prompts).__name__,
                "a non-empty list of prompts (texts, or dicts with 'prompt')",
            )
        if len(prompts) > MAX_PROMPTS:
            raise ImageGenerationValidationError(
                "prompts", f"{len(prompts)} prompts", f"at most {MAX_PROMPTS}"
            )
        return list(prompts)

    def _request_fields(self) -> list[dict[str, Any]]:
        fields = []
        for index, item in enumerate(self._prompt_list()):
            if isinstance(item, Mapping):
                unknown = set(item) - set(_PER_PROMPT)
                if unknown or "prompt" not in item:
                    raise ImageGenerationValidationError(
                        f"prompts[{index}]",
                        sorted(item),
                        f"a dict with 'prompt' and optionally {', '.join(_PER_PROMPT[1:])}",
                    )
                own = dict(item)
            else:
                own = {"prompt": item}
            own.setdefault("seed", self.seed)
            own.setdefault("negative_prompt", self.negative_prompt)
            fields.append({"model": self.model, "n": self.n, "size": self.size, **own})
        return fields

    def _all_requests(self, hook: ImageGenerationHook, ti: Any) -> list[GenerationRequest]:
        if "_requests" not in self.__dict__:
            import dataclasses

            from airflow_provider_imggen.model_table import check_endpoint
            from airflow_provider_imggen.operators.arguments import derived_seed

            requests: list[GenerationRequest] = []
            for index, fields in enumerate(self._request_fields()):
                try:
                    request = hook.validate_request(**fields)
                except ImageGenerationValidationError as error:
                    raise ImageGenerationValidationError(
                        f"prompts[{index}].{error.parameter}", error.value, error.allowed
                    ) from None
                if check_endpoint(request.model, None) != "async":
                    raise ImageGenerationValidationError(
                        "model", request.model, "a model of the native task API (a batch submits tasks)"
                    )
                if request.seed is None:
                    # Equal prompts get distinct seeds (derived_seed leaves room for seed + image index).
                    twin = sum(
                        1 for earlier in requests if dataclasses.replace(earlier, seed=None) == request
                    )
                    request = dataclasses.replace(
                        request, seed=(derived_seed(ti, request) + 10 * twin) % DERIVED_SEED_SPAN
                    )
                requests.append(request)
            if len({request.model for request in requests}) != 1:
                raise ImageGenerationValidationError("model", self.model, "one model for the whole batch")
            self.__dict__["_requests"] = requests
        return self.__dict__["_requests"]

    def _quota(self, model: str) -> tuple[float, int | None]:
        from airflow_provider_imggen.model_table import spec_of

        spec = spec_of(model)
        quota = spec.quota if spec is not None else None
        rate = self.submissions_per_second or (quota.requests / quota.window_seconds if quota else 1.0)
        concurrent = self.concurrent_tasks or (quota.concurrent if quota else 1)
        return rate, concurrent

    def _slots(self, hook: ImageGenerationHook, ti: Any) -> list[dict[str, Any]]:
        """
        Each request's submission body, recorded fields and ledger slot. A slot is named by the request
        (what is sent, to which account) and its occurrence among equal ones, not by its position: a
        retry that renders the prompts in another order finds the same slots.
        """
        from airflow_provider_imggen.billing_journal import billable_fingerprint
        from airflow_provider_imggen.ledger.claims import ledger_fingerprint
        from airflow_provider_imggen.ledger.slots import slot_key
        from airflow_provider_imggen.wire import native

        batch = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}"
        seen: dict[str, int] = {}
        slots = []
        for request in self._all_requests(hook, ti):
            body = native.submission_body(request)
            fingerprint = ledger_fingerprint(billable_fingerprint("async", body), hook.settings)
            occurrence = seen[fingerprint] = seen.get(fingerprint, -1) + 1
            slots.append(
                {
                    "key": slot_key(batch, occurrence, fingerprint),
                    "body": body,
                    "recorded": self._recorded(request),
                }
            )
        return slots

    @staticmethod
    def _recorded(request: GenerationRequest) -> dict[str, Any]:
        from airflow_provider_imggen.records import REQUEST_FIELDS

        return {name: getattr(request, name) for name in REQUEST_FIELDS if name != "input_images"}


def _read_event(event: object) -> tuple[list[str | None], list[str], list[dict[str, Any]]]:
    """
    The event's task ids, slot keys and problems, checked (events live in the metadata DB): a task id must
    be one the provider accepts before it becomes part of a URL.
    """
    from airflow_provider_imggen.billing_journal import IDENTIFIER
    from airflow_provider_imggen.ledger.entry import is_fingerprint

    if not isinstance(event, Mapping) or event.get("status") not in ("done", "error"):
        raise ImageGenerationError("The batch's trigger sent an event this operator does not know")
    if event["status"] == "error":
        raise ImageGenerationError(f"The batch could not run in the triggerer: {event.get('message')}")
    tasks, keys = event.get("tasks"), event.get("keys")
    if (
        not isinstance(tasks, list)
        or not isinstance(keys, list)
        or len(tasks) != len(keys)
        or not all(task is None or (isinstance(task, str) and IDENTIFIER.fullmatch(task)) for task in tasks)
        or not all(is_fingerprint(key) for key in keys)
    ):
        raise ImageGenerationError("The batch's event is not one its trigger sends")
    problems = [dict(problem) for problem in event.get("problems") or [] if isinstance(problem, Mapping)]
    for task_id in event.get("late_tasks") or []:
        problems.append(
            {
                "index": None,
                "status": "failed",
                "code": "late_answer",
                "billed": True,
                "reason": "a task answered after its request was taken over: billed, not delivered",
                "generation_task_id": str(task_id)[:256],
            }
        )
    return list(tasks), list(keys), problems
