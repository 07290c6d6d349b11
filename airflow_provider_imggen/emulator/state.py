"""
One emulator's configuration and state, moto style: :class:`EmulatorState` assembles the parts, each owning
one job, and is what the routes, the admin endpoints and
:class:`~airflow_provider_imggen.emulator.server.EmulatorServer` (from the test thread) talk to:

- ``dice`` (:mod:`~airflow_provider_imggen.emulator.faults`): the fault settings and their seeded draws;
- ``accounts`` (:mod:`~airflow_provider_imggen.emulator.accounts`): keys and the accounts they belong to;
- ``backend`` (:mod:`~airflow_provider_imggen.emulator.backend`): the service's rules: models, tasks,
  quotas, billing;
- ``log`` (:mod:`~airflow_provider_imggen.emulator.request_log`): the one request log, billing read from it;
- ``objects`` (:mod:`~airflow_provider_imggen.emulator.objects`): the images issued and URL signatures.

Each part has its own lock (the server thread serves while the test thread reads).
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_imggen.emulator.accounts import MAIN_ACCOUNT, Accounts, key_id
from airflow_provider_imggen.emulator.backend import ImageBackend
from airflow_provider_imggen.emulator.faults import (
    BILLED_FAULTS,
    REFUSING_FAULTS,
    ErrorStyle,
    FaultConfig,
    FaultDice,
)
from airflow_provider_imggen.emulator.objects import ImageParams, ObjectStore
from airflow_provider_imggen.emulator.quotas import Quotas
from airflow_provider_imggen.emulator.request_log import RequestLog
from airflow_provider_imggen.emulator.tasks import Task, TaskStore

__all__ = [
    "BILLED_FAULTS",
    "MAIN_ACCOUNT",
    "REFUSING_FAULTS",
    "EmulatorConfig",
    "EmulatorState",
    "ErrorStyle",
    "FaultConfig",
    "ImageParams",
    "Task",
    "key_id",
]

# §7: real result URLs carry an Expires about 7 days out (although the docs promise 24 h of task data).
DEFAULT_URL_TTL_SECONDS = 7 * 86_400


@dataclass
class EmulatorConfig:
    """Static configuration of one emulator instance; ``faults`` are the defaults ``reset()`` returns to."""

    api_key: str = field(default="sk-test", repr=False)
    url_ttl_seconds: float = DEFAULT_URL_TTL_SECONDS
    # Random per instance: URLs signed by one emulator do not verify on another (as with real stores).
    signing_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    access_key_id: str = "LTAI5tEmulatorKeyId00"
    faults: FaultConfig = field(default_factory=FaultConfig)
    # Model Studio workspaces the key may use through X-DashScope-WorkSpace; empty: any (not checked).
    workspaces: tuple[str, ...] = ()
    # More API keys -> the account each belongs to ("main" is the account of api_key): quotas and the task
    # list are per account, all its keys together (§7).
    extra_keys: dict[str, str] = field(default_factory=dict, repr=False)


class EmulatorState:
    """All mutable state of one emulator (see the module docstring)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.dice = FaultDice(config.faults)
        self.accounts = Accounts(config.api_key, config.extra_keys, config.workspaces)
        self.objects = ObjectStore(config.signing_secret)
        self.task_store = TaskStore()
        self.quotas = Quotas()
        self.backend = ImageBackend(self.dice, self.task_store, self.quotas)
        self.log = RequestLog(self.task_store.billed)

    # Faults -----------------------------------------------------------------------------------------------
    @property
    def faults(self) -> FaultConfig:
        return self.dice.faults

    def set_faults(self, **fields: Any) -> FaultConfig:
        """Merge ``fields`` into the current faults and restart the RNGs from the (new) seed."""
        return self.dice.set_faults(**fields)

    # Request log and billing ------------------------------------------------------------------------------
    def requests_log(self) -> list[dict[str, Any]]:
        return self.log.entries()

    def billed_images(self) -> int:
        return self.log.billed_images()

    def billing(self) -> dict[str, Any]:
        return self.log.billing()

    def clear_log(self) -> None:
        self.log.clear()

    # Tasks ------------------------------------------------------------------------------------------------
    def tasks(self) -> list[dict[str, Any]]:
        return self.task_store.summaries(self.backend.ttl_s)

    def expire_task(self, task_id: str) -> bool:
        return self.task_store.expire(task_id)

    def reset(self) -> None:
        """Faults back to the configured defaults (RNGs reseeded); log, tasks and quotas cleared."""
        self.set_faults(**dataclasses.asdict(self.config.faults))
        self.clear_log()
        self.task_store.clear()
        self.quotas.clear()
