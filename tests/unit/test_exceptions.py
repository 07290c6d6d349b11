"""Every provider error derives from ImageGenerationError, so one ``except`` catches them all."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_imggen import exceptions
from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationError,
    ImageGenerationMalformedResponseError,
    ImageGenerationOutcomeUnknownError,
    ImageGenerationSubmissionUnknownError,
    ImageGenerationThrottledError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.triggers.image_generation import ImageGenerationTaskTrigger
from tests.conftest import set_imggen_connection


def test_every_provider_exception_derives_from_the_base_class() -> None:
    classes = [
        value
        for value in vars(exceptions).values()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == exceptions.__name__
    ]
    assert len(classes) >= 12
    assert all(issubclass(cls, ImageGenerationError) for cls in classes), classes


@pytest.mark.parametrize(
    ("cls", "final"),
    [
        (ImageGenerationValidationError, True),
        (ImageGenerationOutcomeUnknownError, True),
        (ImageGenerationSubmissionUnknownError, True),
        (ImageGenerationMalformedResponseError, True),
        (ImageGenerationThrottledError, False),
    ],
)
def test_which_errors_airflow_may_retry(cls: type, final: bool) -> None:
    assert issubclass(cls, AirflowFailException) is final
    if cls is not ImageGenerationValidationError:
        assert issubclass(cls, ImageGenerationAPIError)
    assert issubclass(ImageGenerationSubmissionUnknownError, ImageGenerationOutcomeUnknownError)
    assert issubclass(ImageGenerationValidationError, ValueError)


def test_trigger_on_a_connection_with_a_bad_api_style_yields_its_error_event(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The deferrable sensor's trigger: the connection is unusable, which must end in an error event,
    # not in a crash of the trigger (the triggerer would then fail the task without a reason).
    set_imggen_connection(monkeypatch, emulator.base_url, api_style="grpc")
    parameters = inspect.signature(ImageGenerationTaskTrigger).parameters
    key = "generation_task_id" if "generation_task_id" in parameters else "task_id"
    trigger = ImageGenerationTaskTrigger(**{key: "some-task"})

    async def first_event() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger yielded nothing")

    payload = asyncio.run(first_event())
    assert payload["status"] == "error"
    assert "api_style" in payload["message"] and "grpc" in payload["message"]
    assert emulator.requests_log() == []
