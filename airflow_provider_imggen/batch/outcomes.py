"""
What a batch makes of each answer: a failed submission, a task that ended. The money rules in one place:
a request is sent again only when the service provably did nothing with it (or its task failed without
billing), and reported, never sent again, otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_provider_imggen.retry_policy import is_permanent_code

if TYPE_CHECKING:
    from airflow_provider_imggen.exceptions import ImageGenerationAPIError
    from airflow_provider_imggen.results import TaskState

# A task the service refused for its content: reported, never sent again.
CONTENT_CODES = frozenset({"DataInspectionFailed", "IPInfringementSuspect", "data_inspection_failed"})
# Codes that refuse every request of the account alike: the batch stops sending.
ACCOUNT_CODES = frozenset(
    {"InvalidApiKey", "invalid_api_key", "Arrearage", "AccessDenied", "AccessDenied.Unpurchased"}
)
# What a code from the service may look like to be shown, stored or logged; anything else is not echoed.
_CODE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def safe_code(code: object) -> str | None:
    """The service's error code if it looks like one; a placeholder otherwise (it could hold anything)."""
    if code is None:
        return None
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "unreadable-code"


def said(error: ImageGenerationAPIError) -> str:
    """A failure in the provider's words: its kind, HTTP status and code, never the service's message."""
    parts = [type(error).__name__]
    if error.status:
        parts.append(f"HTTP {error.status}")
    code = safe_code(error.code)
    if code:
        parts.append(code)
    return " ".join(parts)


@dataclass(frozen=True)
class Decision:
    """
    ``action``: ``release`` (nothing billed: send again), ``hold`` (never connected: send again after a
    pause), ``stop`` (the account refuses everything: report every unsent request), ``report`` (final) or
    ``recover`` (the outcome is unknown: prove the task from the task list).
    """

    action: str
    code: str | None = None
    reason: str = ""
    billed: bool | None = None


def after_send_failure(error: ImageGenerationAPIError) -> Decision:
    """What a failed submission (not a 429: the caller handles those) means for its request."""
    code = safe_code(error.code)
    if getattr(error, "nothing_sent", False):
        return Decision("hold", code, "never connected")
    if error.status in (401, 403) or (code in ACCOUNT_CODES):
        return Decision("stop", code or f"HTTP {error.status}", said(error), billed=False)
    if error.status == 200:
        # A relayed failure behind HTTP 200: the upstream task failed, nothing was billed.
        return Decision("release", code, said(error), billed=False)
    if error.status is not None and 400 <= error.status < 500 and error.status not in (408, 409):
        # Refused (its content, a parameter): nothing billed, and sending it again would be refused again.
        return Decision("report", code or f"HTTP {error.status}", said(error), billed=False)
    return Decision("recover", code, said(error))


def after_task_end(state: TaskState, *, failures_so_far: int, max_failures: int) -> Decision | None:
    """
    What a terminal task means for its request: None when it delivered images; else ``release`` (it
    failed without billing and may be sent again) or ``report``.
    """
    if state.succeeded and state.images:
        return None
    code = safe_code(state.code) or state.status
    usage = state.usage.get("image_count") if isinstance(state.usage, dict) else None
    metrics = state.task_metrics.get("SUCCEEDED") if isinstance(state.task_metrics, dict) else None
    if state.status == "UNKNOWN":
        return Decision("report", "UNKNOWN", "the task expired or is unknown: it may have been billed")
    if state.status == "CANCELED":
        return Decision("report", code, "the task was canceled", billed=False)
    if state.status == "SUCCEEDED":
        # It succeeded without an image this provider accepts: the service may have billed it.
        codes = {safe_code(image.code) for image in state.failed_images}
        content = codes & CONTENT_CODES
        return Decision(
            "report",
            next(iter(content), None) or code,
            "the task succeeded without a usable image",
            billed=None if not usage else True,
        )
    # FAILED: sent again only when the service says no image succeeded (usage or task_metrics at 0, neither
    # above) and nothing says it would fail again.
    counts = [value for value in (usage, metrics) if isinstance(value, int) and not isinstance(value, bool)]
    unbilled = bool(counts) and not any(counts)
    final = code in CONTENT_CODES or is_permanent_code(code)
    if unbilled and not final and failures_so_far + 1 < max_failures:
        return Decision("release", code, f"the task FAILED ({code}) without billing")
    return Decision(
        "report",
        code,
        f"the task FAILED ({code})" + ("" if unbilled else ": billed"),
        billed=False if unbilled else (True if any(counts) else None),
    )
