"""
API keys and the Alibaba Cloud accounts they belong to.

§7: quotas count per account (main account and RAM users, every key and workspace together) and the task list
shows the tasks of every key of the account. The emulator's ``--api-key`` belongs to the account
:data:`MAIN_ACCOUNT`; ``EmulatorConfig.extra_keys`` maps more keys to an account each (the same one, or
another: tasks and quotas of another account are never shared).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

MAIN_ACCOUNT = "main"


def key_id(api_key: str | None) -> str:
    """A short fingerprint of an API key (the key itself is never stored)."""
    return hashlib.sha256((api_key or "").encode("utf-8", "surrogatepass")).hexdigest()[:16]


class Accounts:
    """Which account a presented key belongs to, and which workspaces the keys may name."""

    def __init__(self, api_key: str, extra_keys: Mapping[str, str], workspaces: tuple[str, ...]) -> None:
        self._keys: dict[str, str] = {api_key: MAIN_ACCOUNT}
        for extra, account in extra_keys.items():
            self._keys.setdefault(extra, account or MAIN_ACCOUNT)
        self.workspaces = workspaces

    def account_of(self, presented: str | None) -> str | None:
        """The account of ``presented`` (compared in constant time), None for a key no account has."""
        if presented is None:
            return None
        found = None
        for known, account in self._keys.items():
            if hmac.compare_digest(presented.encode(), known.encode()):
                found = account
        return found

    def workspace_allowed(self, workspace: str | None) -> bool:
        """Whether a key may name ``workspace`` (X-DashScope-WorkSpace); any when none are configured."""
        return workspace is None or not self.workspaces or workspace in self.workspaces
