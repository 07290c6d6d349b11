"""
The ledger's store: the newest :class:`~airflow_provider_imggen.ledger.entry.LedgerEntry` per fingerprint,
changed only by compare-and-set.

Three calls, each one atomic round trip to the store (plus, for PostgreSQL, its table creation on first use):
no lock is held between calls, and nothing lives outside the store object, so a store is cheap to build
where it is needed (a worker's task, a trigger) from its setting
(:func:`~airflow_provider_imggen.ledger.open_ledger_store`). The calls block; async code (a trigger) runs
them in a thread (``asyncio.to_thread``); one store object may serve several threads at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NewType, Protocol, runtime_checkable

from airflow_provider_imggen.exceptions import ImageGenerationError

if TYPE_CHECKING:
    from airflow_provider_imggen.ledger.entry import LedgerEntry

Version = NewType("Version", str)
"""
What a store returns for each write of an entry and expects back to replace it. Opaque: only the store that
returned it compares it (an S3 ETag, a PostgreSQL counter), and no two writes of a fingerprint share one.
"""


class LedgerStoreError(ImageGenerationError):
    """
    The store could not be reached or refused the call for a reason of its own (no such bucket, access
    denied, connection lost). Airflow may retry.

    From :meth:`LedgerStore.create` or :meth:`LedgerStore.replace`, the write may or may not have been
    applied (the answer was lost): :meth:`LedgerStore.read` tells which.
    """


@runtime_checkable
class LedgerStore(Protocol):
    """The ledger's storage: read an entry, create it if absent, replace it if unchanged."""

    def read(self, fingerprint: str) -> tuple[LedgerEntry, Version] | None:
        """
        The entry of ``fingerprint`` and its version, or ``None`` if there is none.

        :param fingerprint: a sha256 as 64 lowercase hex digits
        :raises LedgerEntryUnreadableError: the stored entry is not one this provider wrote
        :raises LedgerStoreError: the store failed
        """
        ...

    def create(self, entry: LedgerEntry) -> Version | None:
        """
        Write ``entry`` if its fingerprint has none yet, atomically: of concurrent creators exactly one
        gets a version, the others ``None`` (then :meth:`read` shows the winner's entry).

        :raises LedgerStoreError: the store failed; the entry may have been created
        """
        ...

    def replace(self, entry: LedgerEntry, expected: Version) -> Version | None:
        """
        Write ``entry`` over its fingerprint's entry if that is still at version ``expected``, atomically:
        of concurrent replacers expecting the same version exactly one gets the new version, the others
        ``None`` (as when the entry was replaced or removed since ``expected`` was read).

        :param expected: the version :meth:`read` or the last write returned
        :raises LedgerStoreError: the store failed; the entry may have been replaced
        """
        ...

    def close(self) -> None:
        """Release the store's connection or client; a later call opens a new one."""
        ...
