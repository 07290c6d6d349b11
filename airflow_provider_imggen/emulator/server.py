"""Run the emulator in a background thread of the current process (for tests and benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from airflow_provider_imggen.emulator.app import create_app
from airflow_provider_imggen.emulator.state import EmulatorConfig, EmulatorState, FaultConfig

_START_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 10.0


class EmulatorServer:
    """
    The emulator served by uvicorn on a loopback port, in a daemon thread.

    The listening socket is created (and bound, port 0 = any free port) before the thread starts, so
    ``port`` and ``base_url`` are known immediately and there is no race for the port.

    Quotas are on by default, as on the real service; ``EmulatorConfig(faults=FaultConfig(quotas=False))``
    for back-to-back requests that are not about quotas.

    Usage::

        with EmulatorServer() as emulator:
            requests.post(f"{emulator.base_url}/v1/images/generations", ...)
            emulator.set_faults(rate_429=1.0)
    """

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.app = create_app(self.config)
        self.state: EmulatorState = self.app.state.emulator
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> EmulatorServer:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("EmulatorServer already started")
        uvicorn_config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            # Leave the host process's logging configuration alone (uvicorn's would install handlers).
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(uvicorn_config)
        self._thread = threading.Thread(target=self._run, name=f"imggen-emulator-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"imggen emulator failed to start: {self._error!r}") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"imggen emulator did not start within {_START_TIMEOUT_SECONDS:g} s")
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        assert self._server is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # surfaced by start(); a thread has no one else to tell
            self._error = exc

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=_STOP_TIMEOUT_SECONDS)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=_STOP_TIMEOUT_SECONDS)
        self._socket.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # In-process equivalents of the admin endpoints ------------------------------------------------------
    def set_faults(self, **fields: Any) -> FaultConfig:
        """Merge fault settings (same effect as ``PUT /_emulator/faults``); reseeds the fault RNG."""
        return self.state.set_faults(**fields)

    def requests_log(self) -> list[dict[str, Any]]:
        return self.state.requests_log()

    def billed_images(self) -> int:
        return self.state.billed_images()

    def billing(self) -> dict[str, Any]:
        """Billed images and requests, per request id (same as ``GET /_emulator/billing``)."""
        return self.state.billing()

    def clear_log(self) -> None:
        self.state.clear_log()

    def tasks(self) -> list[dict[str, Any]]:
        """The native tasks submitted so far, with their status now (same as ``GET /_emulator/tasks``)."""
        return self.state.tasks()

    def expire_task(self, task_id: str) -> bool:
        """Make a task read UNKNOWN, as after its 24 h (same as ``POST /_emulator/tasks/{id}/expire``)."""
        return self.state.expire_task(task_id)

    def reset(self) -> None:
        """Faults back to ``config.faults``, log and tasks cleared (same as ``POST /_emulator/reset``)."""
        self.state.reset()
