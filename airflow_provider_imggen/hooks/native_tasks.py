"""
The blocking hook's reads of DashScope's task API (status, wait, cancel, list) and the recovery of a
submission whose outcome is unknown: which listed task, if any, is provably its own. Reads only: nothing
here bills.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationMalformedResponseError,
    ImageGenerationRejectedError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationTaskTimeoutError,
    billed_note,
)
from airflow_provider_imggen.polling import (
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    TaskWait,
    check_poll_settings,
)
from airflow_provider_imggen.request import (
    GenerationRequest,
)
from airflow_provider_imggen.results import (
    ListedTask,
    SubmittedTask,
    TaskState,
)
from airflow_provider_imggen.wire import native
from airflow_provider_imggen.wire.native import (
    flatten_native_request,
    parse_task_list,
    task_list_params,
    task_list_window,
)

if TYPE_CHECKING:
    from airflow_provider_imggen.billing_journal import Attempt, BillingJournal

from airflow_provider_imggen.hooks.blocking import BlockingHookBase

# The task list is searched this far around a lost submission (clocks differ; the service is slow).
TASK_LIST_MARGIN = timedelta(seconds=60)
# How long a recovery waits for candidate tasks to finish: only a finished task's status names its prompt.
RECOVERY_TIMEOUT = 300.0


class NativeTasksHook(BlockingHookBase):
    """
    Reads of the native task API for :class:`~airflow_provider_imggen.hooks.image_generation.
    ImageGenerationHook`.
    """

    def get_task(self, generation_task_id: str) -> TaskState:
        """
        The task's status and, once SUCCEEDED, its images (read-only: retried on every transient failure).

        An unknown or expired task id reads as status ``UNKNOWN``, as the API answers.
        """
        self._require_dashscope("get_task()")
        url = self._task_url(generation_task_id)
        body, request_id = self._request_json("GET", url)
        return self._parse_task_state(body, request_id, generation_task_id)

    def cancel_task(self, generation_task_id: str) -> bool:
        """
        Cancel a task that is still PENDING. True if canceled; False if the API refused because the task
        is no longer pending (running, done, or unknown).
        """
        self._require_dashscope("cancel_task()")
        url = self._task_url(generation_task_id, "/cancel")
        try:
            self._request_json("POST", url)
        except ImageGenerationRejectedError as error:
            if self._cancel_refused(error, generation_task_id):
                return False
            raise
        self.log.info("Canceled task %s", generation_task_id)
        return True

    def wait_for_task(
        self,
        generation_task_id: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        timeout: float | None = None,
    ) -> TaskState:
        """
        Poll a task in this process until it is terminal (see :func:`next_poll_interval` for the pace).

        :param poll_interval: seconds between polls for the first 30 s
        :param max_poll_interval: the longest wait between polls once backing off
        :param timeout: give up after this many seconds (default: wait as long as the task lives)
        :raises ImageGenerationTaskTimeoutError: the task was still running at ``timeout``
        :return: the terminal state (check it with :meth:`TaskState.raise_for_status`)
        """
        check_poll_settings(poll_interval, max_poll_interval, timeout)
        wait = TaskWait(
            poll_interval, max_poll_interval, deadline=None if timeout is None else time.time() + timeout
        )
        while True:
            state = self.get_task(generation_task_id)
            if wait.saw(state.status):
                self.log.info("Task %s is %s", generation_task_id, state.status)
            if state.is_terminal:
                return state
            if wait.expired():
                raise ImageGenerationTaskTimeoutError(
                    generation_task_id=generation_task_id, task_status=state.status, waited=timeout
                )
            time.sleep(wait.next_delay())

    def recover_submission(
        self,
        request: GenerationRequest,
        body_sent: dict[str, Any],
        attempt: Attempt,
        journal: BillingJournal,
        *,
        unknown: ImageGenerationSubmissionUnknownError | ImageGenerationMalformedResponseError | None = None,
    ) -> SubmittedTask:
        """
        The task a submission whose outcome is unknown created, proven from the task list, or the error.

        ``attempt`` is the journal's record of the submission (its intent's time bounds the search); the
        tasks the journal already holds are never adopted again. ``unknown`` is the error this process saw
        (None when an earlier try died without recording an outcome).

        :raises ImageGenerationSubmissionUnknownError: no single listed task is provably the submission's
            (:class:`ImageGenerationMalformedResponseError` when the submission was answered unreadably)
        """
        request_id = unknown.request_id if unknown is not None else attempt.request_id
        try:
            found, candidates = self._find_submitted(
                request,
                submitted_at=attempt.sent_at,
                request_id=request_id,
                excluding=journal.task_ids(),
                foreign=journal.is_foreign,
            )
        except ImageGenerationAPIError as error:
            self.log.warning("Could not search the task list for the lost submission: %s", error)
            found, note = None, "the task list could not be read"
        else:
            note = (
                f"the task list shows no single task it could be; candidates: {', '.join(candidates)}"
                if candidates
                else "the task list shows no task it could be"
            )
        if found is None:
            journal.record_outcome(attempt, "unknown", reason=note)
            what = (
                unknown.message
                if unknown is not None
                else f"Attempt {attempt.number} submitted this request at {attempt.intent_at} and its try "
                "ended before the outcome was recorded"
            )
            if isinstance(unknown, ImageGenerationMalformedResponseError):
                raise ImageGenerationMalformedResponseError(
                    f"{what} ({note})",
                    status=unknown.status,
                    request_id=unknown.request_id,
                    model=unknown.model,
                    images_at_risk=unknown.images_at_risk,
                ) from None
            raise ImageGenerationSubmissionUnknownError(
                f"{what} ({note}). {billed_note(request.model, request.n)}",
                model=request.model,
                images_at_risk=request.n,
                submitted_at=attempt.sent_at,
                status=getattr(unknown, "status", None),
                code=getattr(unknown, "code", None),
                request_id=request_id,
            ) from None
        journal.record_outcome(attempt, "task", generation_task_id=found.generation_task_id)
        self.log.warning(
            "The submission of %s was lost (%s); the task list proves one task its own: reconnected to "
            "task %s (status %s), nothing submitted again",
            attempt.intent_at,
            type(unknown).__name__ if unknown is not None else "the try ended before its outcome",
            found.generation_task_id,
            found.status,
        )
        return SubmittedTask(
            generation_task_id=found.generation_task_id,
            task_status=found.status or "PENDING",
            request_id=found.request_id,
            model=request.model,
            parameters=flatten_native_request(body_sent),
        )

    def find_submitted_task(
        self,
        request: GenerationRequest,
        *,
        submitted_at: datetime,
        until: datetime | None = None,
        request_id: str | None = None,
    ) -> str | None:
        """
        The task a submission of ``request`` created, after its outcome was unknown: lists the service's
        tasks (``GET /api/v1/tasks``) for the model from ``submitted_at`` - 60 s to ``until`` (default now)
        + 60 s and returns the task id when exactly one task matches (or one carries ``request_id``),
        else None. Reads only: bills nothing.

        :param request: the request that was submitted
        :param submitted_at: when it was sent (UTC; naive datetimes are taken as UTC)
        :param until: the end of the search window (default: now)
        :param request_id: the lost submission's request id, when an answer named one
        """
        found, _ = self._find_submitted(
            request, submitted_at=submitted_at, until=until, request_id=request_id
        )
        return found.generation_task_id if found is not None else None

    def _find_submitted(
        self,
        request: GenerationRequest,
        *,
        submitted_at: datetime,
        until: datetime | None = None,
        request_id: str | None = None,
        excluding: frozenset[str] = frozenset(),
        foreign: Callable[[str], bool] | None = None,
    ) -> tuple[ListedTask | None, tuple[str, ...]]:
        """
        The one listed task proven to be ``request``'s, or None; and the ids of the candidates looked at.
        Tasks in ``excluding`` (created by other attempts) are never candidates, nor those ``foreign``
        says another generation owns (asked once they finished, when their owner has recorded them). The
        task list shows the tasks of every key of the account (api-notes §7): other pipelines, other keys.
        A task is ours only when its request id is the lost submission's, or, once finished, its status
        names our prompt and image count; a candidate that does not finish within
        :data:`RECOVERY_TIMEOUT` cannot be proven, and neither can two that match: None then, and the
        caller fails closed.
        """
        self._require_dashscope("find_submitted_task()")
        if submitted_at.tzinfo is None:
            submitted_at = submitted_at.replace(tzinfo=UTC)
        start = submitted_at - TASK_LIST_MARGIN
        end = (until or datetime.now(tz=UTC)) + TASK_LIST_MARGIN
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        list_start, list_end = task_list_window(start, end)
        listed = self.list_tasks(start_time=list_start, end_time=list_end, model_name=request.model)
        candidates = [
            task
            for task in listed
            if task.model in (None, request.model)
            and task.generation_task_id not in excluding
            and task.created_at is not None
            and start <= task.created_at <= end
        ]
        self.log.info(
            "Task list for %s between %s and %s (UTC): %d candidate task(s)",
            request.model,
            start.isoformat(timespec="seconds"),
            end.isoformat(timespec="seconds"),
            len(candidates),
        )
        names = tuple(task.generation_task_id for task in candidates)
        if request_id:
            by_request = [task for task in candidates if task.request_id == request_id]
            if len(by_request) == 1:
                return by_request[0], names
        if request.images:
            # A task's status names its prompt and image count, never its input images: edits of several
            # products with one prompt (a mapped edit) cannot be told apart that way. Only the request id
            # proves an edit's task; without it, fail closed rather than deliver another product's edit.
            self.log.warning(
                "An edit's task is proven only by its request id, which the task list does not show here: "
                "the prompt and image count cannot tell edits of different inputs apart"
            )
            return None, names
        return self._identify(request, candidates, foreign), names

    def _identify(
        self,
        request: GenerationRequest,
        candidates: Sequence[ListedTask],
        foreign: Callable[[str], bool] | None = None,
    ) -> ListedTask | None:
        """Of ``candidates``, the one whose finished status names ``request``'s prompt and image count."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        ours: list[ListedTask] = []
        for candidate in candidates:
            try:
                state = self.wait_for_task(
                    candidate.generation_task_id, timeout=max(0.0, deadline - time.monotonic())
                )
            except ImageGenerationTaskTimeoutError:
                self.log.warning(
                    "Task %s did not finish within %ss: it cannot be told apart from the lost submission",
                    candidate.generation_task_id,
                    RECOVERY_TIMEOUT,
                )
                return None
            total = state.task_metrics.get("TOTAL")
            if state.prompt != request.prompt or total != request.n:
                continue
            if foreign is not None and foreign(candidate.generation_task_id):
                self.log.info(
                    "Task %s carries this prompt but another generation owns it", candidate.generation_task_id
                )
                continue
            ours.append(dataclasses.replace(candidate, status=state.status))
        if len(ours) != 1:
            self.log.warning(
                "%d listed task(s) carry this request's prompt and image count: %s",
                len(ours),
                ", ".join(task.generation_task_id for task in ours) or "none",
            )
            return None
        return ours[0]

    def list_tasks(
        self,
        *,
        start_time: datetime,
        end_time: datetime,
        model_name: str | None = None,
        status: str | None = None,
    ) -> list[ListedTask]:
        """
        The native tasks created between ``start_time`` and ``end_time`` (UTC), optionally of one model
        and status, every page read (``GET /api/v1/tasks``; read-only, retried on transient failures).
        """
        self._require_dashscope("list_tasks()")
        url = f"{self.settings.base_url}{native.TASKS_PATH}"
        params = task_list_params(start_time, end_time, model_name, status)
        tasks: list[ListedTask] = []
        for page_no in range(1, native.TASK_LIST_MAX_PAGES + 1):
            body, _ = self._request_json("GET", url, params={**params, "page_no": page_no})
            page, total = parse_task_list(body)
            tasks.extend(page)
            if (
                not page
                or len(page) < native.TASK_LIST_PAGE_SIZE
                or (total is not None and len(tasks) >= total)
            ):
                break
        return tasks
