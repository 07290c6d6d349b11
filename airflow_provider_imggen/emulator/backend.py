"""
The service's rules, moto style: which endpoint serves which model, task submission and life, the task
list, quotas per account and model. Routes parse a request, ask the backend, and render what it returns; the
backend answers errors by raising :class:`~airflow_provider_imggen.emulator.errors.ServiceError`. It knows
nothing of HTTP, and nothing of injected faults beyond the scripted outcome of the next task.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from airflow_provider_imggen.emulator.editing import edit_parameters
from airflow_provider_imggen.emulator.errors import ServiceError, invalid, model_not_found, throttling
from airflow_provider_imggen.emulator.faults import FaultConfig, FaultDice
from airflow_provider_imggen.emulator.models import ENDPOINT_PATHS, is_known, limits_of, serves
from airflow_provider_imggen.emulator.objects import InputImage, image_params, upsampled_prompt
from airflow_provider_imggen.emulator.quotas import Quotas, submission_limits
from airflow_provider_imggen.emulator.tasks import Task, TaskStore
from airflow_provider_imggen.emulator.validation import InvalidRequestError, ValidRequest, validate_request

SYNC_ONLY_MESSAGE = "current user api does not support asynchronous calls"


@dataclass(frozen=True)
class TaskQuery:
    """The task list's filters: submitted in [start, end] (epoch seconds), and the optional ones."""

    start: float
    end: float
    task_id: str | None = None
    model: str | None = None
    status: str | None = None
    page_no: int = 1
    page_size: int = 10


def model_named(model: object) -> str:
    """The model a DashScope request names, or a 400."""
    if not isinstance(model, str) or not model.strip():
        raise invalid(f"Invalid model={model!r}: expected a model name", "model")
    return model.strip()


def _refused_at_submission(exc: InvalidRequestError) -> bool:
    """A missing model or prompt is refused at once; values out of the model's limits fail the task."""
    if exc.parameter == "model":
        return True
    return exc.parameter == "prompt" and (not isinstance(exc.value, str) or not exc.value.strip())


class ImageBackend:
    def __init__(self, dice: FaultDice, tasks: TaskStore, quotas: Quotas) -> None:
        self.dice = dice
        self.tasks = tasks
        self.quotas = quotas

    @property
    def faults(self) -> FaultConfig:
        return self.dice.faults

    @property
    def ttl_s(self) -> float:
        return self.faults.task_ttl_ms / 1000

    # Models -----------------------------------------------------------------------------------------------
    def check_model(self, model: object, endpoint: str) -> str:
        """
        The model, if ``endpoint`` (a key of ``ENDPOINT_PATHS``) serves it: 404 ModelNotFound for a model the
        service does not have; 403 AccessDenied on the text2image task API for a model the synchronous
        endpoint serves (§7), and on image-generation for a synchronous-only one; 400 InvalidParameter
        naming the endpoint that serves it otherwise (e.g. wan2.5-i2i-preview on text2image, a
        text-to-image model on image2image).
        """
        name = model_named(model)
        if not is_known(name):
            raise model_not_found(name)
        if serves(name, endpoint):
            return name
        served = limits_of(name)["endpoints"]
        if (endpoint == "task" and "multimodal" in served) or (
            endpoint == "image-generation" and served == ("multimodal",)
        ):
            raise ServiceError(
                403, "AccessDenied", SYNC_ONLY_MESSAGE, param="model", outcome="denied", model=name
            )
        asynchronous = " with X-DashScope-Async: enable" if served[0] != "multimodal" else ""
        message = (
            f"Model {name} is not supported by {ENDPOINT_PATHS[endpoint]}: use {ENDPOINT_PATHS[served[0]]}"
            f"{asynchronous}."
        )
        raise invalid(message, "model", name)

    # Task API ---------------------------------------------------------------------------------------------
    def submit_task(
        self,
        account: str,
        key: str,
        request_id: str,
        body: dict[str, Any],
        *,
        endpoint: str = "task",
        inputs: tuple[InputImage, ...] = (),
    ) -> Task:
        """
        Create a task from a submission's body (``input.prompt``, ``parameters``) to ``endpoint``, with its
        input images already checked: refused (400/403/404/429) or created; parameters out of the model's
        limits give a task that ends FAILED InvalidParameter (``invalid_native_params="fail_task"``).
        """
        model = self.check_model(body.get("model"), endpoint)
        text_input, parameters = body.get("input"), body.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(text_input, dict) or not isinstance(parameters, dict):
            # Unreadable: refused at submission whatever invalid_native_params says.
            message = "input must be an object with a prompt, and parameters an object when given."
            raise invalid(message, None, model)
        failure: InvalidRequestError | None = None
        validated: ValidRequest | None = None
        try:
            validated = validate_native(model, text_input, parameters, inputs)
        except InvalidRequestError as exc:
            if _refused_at_submission(exc) or self.faults.invalid_native_params == "reject":
                raise invalid(str(exc), exc.parameter, model) from None
            failure = exc
        queued_s = self._task_slot(account, model)
        faults = self.faults
        task = Task(
            task_id=str(uuid.uuid4()),
            model=model,
            n=1,
            images=(),
            orig_prompt="",
            actual_prompt="",
            submitted_at=time.time(),
            pending_s=faults.task_pending_ms / 1000 + queued_s,
            duration_s=faults.task_duration_ms / 1000,
            suspended_s=faults.task_suspended_ms / 1000,
            failure_code="InvalidParameter",
            failure_message=str(failure),
            failed_images=frozenset(),
            request_id=request_id,
            key_id=key,
            account=account,
            endpoint=endpoint,
        )
        if validated is not None:
            code, failed = self.dice.draw_task_outcome()
            task.n = validated.n
            task.images = tuple(image_params(validated, inputs=inputs))
            task.orig_prompt = validated.prompt
            # §6: actual_prompt is absent when prompt extension is off ("" here: left out of the answer).
            task.actual_prompt = upsampled_prompt(validated) or ""
            task.failure_code, task.failure_message = code, None
            task.failed_images = frozenset(index for index in failed if index < validated.n)
        else:
            n = parameters.get("n", limits_of(model)["native_default_n"])
            task.n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        self.tasks.add(task)
        return task

    def _task_slot(self, account: str, model: str) -> float:
        """
        Count a submission against the account's quota for ``model``: 429 over the rate, and over the
        concurrency unless ``concurrency_overflow="queue"``, which instead returns how long the task waits
        PENDING for a slot (seconds).
        """
        faults = self.faults
        scope = (account, model)
        ends = self.tasks.active_ends(account, model, self.ttl_s)
        queue = faults.concurrency_overflow == "queue"
        limit = self.quotas.acquire(faults, scope, active=None if queue else len(ends), in_flight=False)
        if limit is not None:
            raise throttling(limit, faults, model)
        concurrent = submission_limits(faults, model)[1]
        if not queue or not faults.quotas or concurrent is None or len(ends) < concurrent:
            return 0.0
        # With k slots and m tasks holding one, a slot frees when the (m - k + 1)-th earliest of them ends.
        return max(0.0, ends[len(ends) - concurrent] - time.time())

    def task(self, task_id: str) -> tuple[Task | None, str]:
        return self.tasks.lookup(task_id, self.ttl_s)

    def cancel(self, task_id: str) -> None:
        """Cancel a PENDING task (its images are then not billed), else 400 UnsupportedOperation."""
        previous = self.tasks.cancel(task_id, self.ttl_s)
        if previous != "PENDING":
            message = f"Failed to cancel the task: only PENDING tasks can be canceled, it is {previous}."
            raise ServiceError(400, "UnsupportedOperation", message)

    def list_tasks(self, account: str, query: TaskQuery) -> tuple[list[tuple[Task, str]], int]:
        """One page of the account's tasks (every key's, §7), newest first, and how many matched."""
        found = [
            (task, status)
            for task, status in self.tasks.of_account(account, self.ttl_s)
            if query.start <= task.submitted_at <= query.end
            and query.task_id in (None, task.task_id)
            and query.model in (None, task.model)
            and query.status in (None, status)
        ]
        first = (query.page_no - 1) * query.page_size
        return found[first : first + query.page_size], len(found)

    # Generations answered in the request (synchronous endpoint, gateway) ----------------------------------
    @contextlib.contextmanager
    def generation(self, account: str, model: str, *, task_api: bool) -> Iterator[None]:
        """
        Hold the account's quota for one generation answered in the request. ``task_api``: made through the
        task API (a gateway relaying to it), so it holds a concurrency slot while in flight; the synchronous
        endpoint has no concurrency quota (§7).
        """
        faults = self.faults
        scope = (account, model)
        count = task_api and faults.concurrency_overflow == "refuse"
        active = len(self.tasks.active_ends(account, model, self.ttl_s)) if count else None
        limit = self.quotas.acquire(faults, scope, active=active, in_flight=task_api)
        if limit is not None:
            raise throttling(limit, faults, model)
        try:
            yield
        finally:
            if task_api:
                self.quotas.release(scope)


def validate_native(
    model: str,
    text_input: dict[str, Any],
    parameters: dict[str, Any],
    inputs: tuple[InputImage, ...] = (),
    *,
    sync: bool = False,
) -> ValidRequest:
    """
    A DashScope body's ``input`` and ``parameters`` validated with the model's native defaults, and with
    the editing rules for its (checked) input images; ``sync``: a synchronous call (n defaults to 1).
    """
    params, overrides = edit_parameters(model, parameters, inputs, sync=sync)
    # Where qwen-image's negative_prompt goes differs between the prose and the examples (§7): both read.
    negative = text_input.get("negative_prompt", params.get("negative_prompt"))
    return validate_request(
        prompt=text_input.get("prompt"),
        model=model,
        n=params.get("n"),
        size=params.get("size"),
        negative_prompt=negative,
        prompt_upsampling=params.get("prompt_extend"),
        seed=params.get("seed"),
        native=True,
        watermark=params.get("watermark"),
        overrides=overrides,
        input_count=len(inputs),
    )
