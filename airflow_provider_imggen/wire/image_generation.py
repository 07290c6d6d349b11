"""
DashScope's asynchronous ``POST /api/v1/services/aigc/image-generation/generation`` (wan2.6-t2i, wan2.6-image,
wan2.7-image and -pro; api-notes §7, the Wan2.6 reference): the synchronous endpoint's messages body, sent
with ``X-DashScope-Async: enable``, answered with a task id and polled on ``/api/v1/tasks/{id}`` like the
task API's other surfaces (whose status answers in the synchronous shape: ``native.parse_task_state``
reads both). Faces ``emulator/image2image.py``'s image-generation route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.wire import multimodal

if TYPE_CHECKING:
    from airflow_provider_imggen.request import GenerationRequest

PATH = "/api/v1/services/aigc/image-generation/generation"


def submission_body(request: GenerationRequest) -> dict[str, Any]:
    """The messages body of the synchronous endpoint: input images, then the prompt, in one user message."""
    return multimodal.request_body(request)
