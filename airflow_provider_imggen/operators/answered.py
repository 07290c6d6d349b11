"""
The generation operator on the gateway and DashScope's synchronous endpoint: one billable request answered
with the images, and what its billing journal lets a retry return instead of paying again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
    from airflow_provider_imggen.request import GenerationRequest


def generate_answered(
    operator: ImageGenerationOperator, request: GenerationRequest, output_path: str | None, ti: Any
) -> dict[str, Any]:
    """
    The XCom of one answered generation. What it delivers is recorded in the billing journal with its
    outcome: a retry after a crash returns that XCom again instead of paying again, and refuses to send a
    request whose outcome is unknown.
    """
    from airflow_provider_imggen.operators.b64_output import deliver_b64
    from airflow_provider_imggen.operators.xcom import delivered_again, generation_xcom
    from airflow_provider_imggen.prices import price_for

    journal = operator._journal
    assert journal is not None, "execute() opens the journal"
    hook, log = operator.hook, operator.log
    fingerprint = hook.billable_send(request).fingerprint
    price = price_for(hook.settings, request.model, request.prompt_upsampling)
    earlier = journal.last_for(fingerprint)
    delivered = (
        delivered_again(earlier.delivered, output_path)
        if operator.reuse and earlier is not None and earlier.outcome == "answered" and earlier.delivered
        else None
    )
    if earlier is not None and delivered is not None:
        log.info(
            "Attempt %d (%s) already delivered this request (request id %s): its XCom again, nothing sent",
            earlier.number,
            earlier.intent_at,
            earlier.request_id,
        )
        return delivered
    if request.response_format == "url":
        # Recorded with the outcome, in one write: nothing is lost between the answer and the XCom.
        journal.deliverable = lambda result: generation_xcom(result, request, {}, price=price)
    # The gateway answers synchronously: its quota waits happen in the worker, whatever deferrable says.
    result = operator._billable(
        lambda: hook.generate(request, journal=journal, reuse=operator.reuse), request, deferrable=False
    )
    answered = journal.last_for(fingerprint)
    if answered is not None and answered.delivered is not None:
        return answered.delivered
    return deliver_b64(result, request, output_path, ti, journal, answered, log, price=price)
