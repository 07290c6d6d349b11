"""
A native submission answered 200 without a usable task id (a case the emulator does not serve): a tiny
service on loopback that answers so, lists the task it did create and answers its status (finished at
once, naming the prompt as the service does).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_imggen.exceptions import ImageGenerationMalformedResponseError
from tests.conftest import set_imggen_connection
from tests.integration.hooks.test_image_generation import fast_hook


class _TaskIdLost(BaseHTTPRequestHandler):
    """Creates a task on each submission but answers without its id; lists the tasks it created."""

    requests: ClassVar[list[str]] = []
    created: ClassVar[list[dict]] = []
    prompts: ClassVar[dict[str, str]] = {}

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self.requests.append(f"POST {self.path}")
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        task_id = f"task-{len(self.created) + 1}"
        self.prompts[task_id] = body["input"]["prompt"]
        self.created.append(
            {
                "task_id": task_id,
                "status": "PENDING",
                "model_name": "qwen-image",
                "gmt_create": int(datetime.now(tz=UTC).timestamp() * 1000),
                "request_id": "lost",
            }
        )
        self._answer({"request_id": "sub-1", "output": {"task_status": "PENDING"}})

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.requests.append(f"GET {path}")
        task_id = path.removeprefix("/api/v1/tasks").strip("/")
        if not task_id:
            self._answer({"request_id": "list-1", "data": self.created, "total": len(self.created)})
            return
        result = {"url": f"http://127.0.0.1/{task_id}.png", "orig_prompt": self.prompts[task_id]}
        output = {"task_id": task_id, "task_status": "SUCCEEDED", "results": [result]}
        output["task_metrics"] = {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
        self._answer({"request_id": "status-1", "output": output})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def task_id_lost(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_TaskIdLost]]:
    handler = type("Handler", (_TaskIdLost,), {"requests": [], "created": [], "prompts": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    set_imggen_connection(
        monkeypatch,
        f"http://127.0.0.1:{server.server_address[1]}",
        api_style="dashscope",
        default_model="qwen-image",
    )
    yield handler
    server.shutdown()
    server.server_close()


def test_unreadable_submission_answer_reconnects_to_the_listed_task(task_id_lost: type[_TaskIdLost]) -> None:
    submitted = fast_hook().submit_task("a lighthouse")
    assert submitted.generation_task_id == "task-1"
    assert task_id_lost.requests == [
        "POST /api/v1/services/aigc/text2image/image-synthesis",
        "GET /api/v1/tasks",
        "GET /api/v1/tasks/task-1",
    ]


def test_unreadable_submission_answer_among_other_tasks_is_matched_by_prompt(
    task_id_lost: type[_TaskIdLost],
) -> None:
    hook = fast_hook()
    first = hook.submit_task("first")
    assert (first.generation_task_id, hook.submit_task("second").generation_task_id) == ("task-1", "task-2")


def test_unreadable_submission_answer_among_tasks_of_the_same_prompt_is_final(
    task_id_lost: type[_TaskIdLost],
) -> None:
    hook = fast_hook()
    hook.submit_task("a lighthouse")
    with pytest.raises(ImageGenerationMalformedResponseError) as raised:
        hook.submit_task("a lighthouse")
    assert isinstance(raised.value, AirflowFailException)
    assert "no single task" in str(raised.value) and raised.value.request_id == "sub-1"
    assert (raised.value.model, raised.value.images_at_risk) == ("qwen-image", 1)
    assert "up to 1 image(s) of qwen-image" in str(raised.value)
    assert [entry for entry in task_id_lost.requests if entry.startswith("POST")] == [
        "POST /api/v1/services/aigc/text2image/image-synthesis"
    ] * 2
