"""
The LedgerStore contract, the same for S3 (moto_server) and PostgreSQL (a real server): each test runs
once per store.
"""

from __future__ import annotations

import contextlib
import json
import traceback

import pytest

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.ledger import (
    LedgerEntry,
    LedgerEntryUnreadableError,
    LedgerStore,
    StoredImage,
    Version,
)
from tests.integration.ledger.conftest import Ledger, claim, entry_document, fingerprint

# Not a valid value of any field (uppercase, "_", no "/"): a refusal must come from its place, not its form.
SECRET = "SECRET_sk-live-0123456789abcdef"


def stored(fp: str) -> LedgerEntry:
    image = StoredImage(
        index=0, bucket="imggen-content", key=f"posters/{fp[:8]}/0.png", sha256="ab" * 32, bytes=1234
    )
    return claim(
        fp,
        state="stored",
        generation_task_id="task-1",
        request_id="req-1",
        images=(image,),
        updated_at="2026-01-01T00:05:00+00:00",
    )


def test_is_a_ledger_store(ledger: Ledger) -> None:
    assert isinstance(ledger.store, LedgerStore)


def test_read_of_an_absent_fingerprint_is_none(ledger: Ledger) -> None:
    assert ledger.store.read(fingerprint()) is None


def test_create_then_read_from_another_store_object(ledger: Ledger) -> None:
    fp = fingerprint()
    entry = claim(fp)
    version = ledger.store.create(entry)
    assert isinstance(version, str) and version

    found = ledger.open().read(fp)  # another worker's store object
    assert found == (entry, version)


def test_create_twice_keeps_the_first(ledger: Ledger) -> None:
    fp = fingerprint()
    first = claim(fp, owner="content/run_a/generate/-1/1")
    version = ledger.store.create(first)

    assert ledger.open().create(claim(fp, owner="content/run_b/generate/-1/1")) is None
    assert ledger.store.read(fp) == (first, version)


def test_replace_at_the_current_version_writes_and_moves_the_version(ledger: Ledger) -> None:
    fp = fingerprint()
    v1 = ledger.store.create(claim(fp))
    assert v1 is not None
    billed = claim(fp, state="billed", generation_task_id="task-1", request_id="req-1")

    v2 = ledger.store.replace(billed, v1)

    assert v2 is not None and v2 != v1
    assert ledger.store.read(fp) == (billed, v2)
    done = stored(fp)
    v3 = ledger.store.replace(done, v2)
    assert v3 not in (None, v1, v2)
    assert ledger.store.read(fp) == (done, v3)


def test_replace_at_a_stale_version_writes_nothing(ledger: Ledger) -> None:
    fp = fingerprint()
    v1 = ledger.store.create(claim(fp))
    assert v1 is not None
    billed = claim(fp, state="billed", request_id="req-1")
    v2 = ledger.store.replace(billed, v1)

    assert ledger.open().replace(claim(fp, state="released"), v1) is None
    assert ledger.store.read(fp) == (billed, v2)


def test_the_same_entry_written_twice_still_moves_the_version(ledger: Ledger) -> None:
    """Every write has a version of its own, even of identical bytes: a holder of the old one loses."""
    fp = fingerprint()
    entry = claim(fp)
    v1 = ledger.store.create(entry)
    assert v1 is not None
    v2 = ledger.store.replace(entry, v1)

    assert v2 is not None and v2 != v1
    assert ledger.store.replace(entry, v1) is None


def test_replace_of_an_absent_entry_is_none(ledger: Ledger) -> None:
    fp = fingerprint()
    version = ledger.store.create(claim(fp))
    assert version is not None
    assert ledger.store.replace(claim(fingerprint()), version) is None


def test_a_version_not_from_the_store_is_refused_or_loses(ledger: Ledger) -> None:
    fp = fingerprint()
    ledger.store.create(claim(fp))
    for made_up in ("1234", '"0123456789abcdef0123456789abcdef"'):
        # PostgreSQL refuses a version that is not one of its own; S3 compares it and loses.
        with contextlib.suppress(ImageGenerationValidationError):
            assert ledger.store.replace(claim(fp, state="released"), Version(made_up)) is None
    assert ledger.store.read(fp)[0] == claim(fp)  # type: ignore[index]


@pytest.mark.parametrize("bad", ["", "A" * 64, "a" * 63, "../" + "a" * 61, "a" * 64 + ".json", "g" * 64])
def test_a_fingerprint_that_is_not_one_is_refused_before_the_store(ledger: Ledger, bad: str) -> None:
    with pytest.raises(ImageGenerationValidationError, match="fingerprint"):
        ledger.store.read(bad)


def _refused(ledger: Ledger, fp: str, document: str) -> LedgerEntryUnreadableError:
    ledger.tamper(fp, document)
    with pytest.raises(LedgerEntryUnreadableError) as caught:
        ledger.store.read(fp)
    error = caught.value
    # The traceback a task log would show, chained exceptions included.
    shown = "".join(traceback.format_exception(error)) + f"{error!r} {error.args}"
    assert SECRET not in shown, "the error echoes the stored content"
    assert fp in shown  # where it is, so that someone can repair it
    return error


EDITS = {
    "state not a state": ({"state": SECRET}, "state"),
    "state of the wrong type": ({"state": ["claimed"]}, "state"),
    "owner of the wrong type": ({"owner": 12}, "owner"),
    "owner not a task instance": ({"owner": SECRET}, "owner"),
    "owner with a newline": ({"owner": "a/b/c/0/1\n" + SECRET}, "owner"),
    "claimed_at not a time": ({"claimed_at": SECRET}, "claimed_at"),
    "updated_at not in UTC": ({"updated_at": "2026-01-01T00:00:00+02:00"}, "updated_at"),
    "request_id of the wrong type": ({"request_id": {"id": SECRET}}, "request_id"),
    "request not an object": ({"request": [SECRET]}, "request"),
    "images not a list": ({"images": SECRET}, "images"),
    "format unknown": ({"format": 2}, "format"),
    "format a boolean": ({"format": True}, "format"),
    "a field missing": ({"owner": ...}, "owner"),
    "a field too many": ({SECRET: "x"}, "besides"),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_an_edited_entry_is_refused_without_its_content(ledger: Ledger, edit: tuple[dict, str]) -> None:
    fp = fingerprint()
    ledger.store.create(claim(fp))
    changes, named = edit

    error = _refused(ledger, fp, entry_document(claim(fp), **changes))

    assert named in error.reason


IMAGE_EDITS = {
    "sha256 not hex": ({"sha256": SECRET}, "sha256"),
    "sha256 uppercase": ({"sha256": "AB" * 32}, "sha256"),
    "bytes a string": ({"bytes": "1234"}, "bytes"),
    "bytes negative": ({"bytes": -1}, "bytes"),
    "index a boolean": ({"index": True}, "index"),
    "bucket not a bucket": ({"bucket": SECRET}, "bucket"),
    "key with a control character": ({"key": "a\x1b[2J" + SECRET}, "key"),
}


@pytest.mark.parametrize("edit", IMAGE_EDITS.values(), ids=IMAGE_EDITS.keys())
def test_an_edited_image_is_refused_without_its_content(ledger: Ledger, edit: tuple[dict, str]) -> None:
    fp = fingerprint()
    data = stored(fp).to_dict()
    data["images"][0].update(edit[0])

    error = _refused(ledger, fp, json.dumps(data))

    assert error.reason.startswith(f"images[0].{edit[1]}")


@pytest.mark.parametrize("bad", ["not hex" * 9 + "x", SECRET, "A" * 64, 42])
def test_an_entry_whose_fingerprint_is_not_one_is_refused(ledger: Ledger, bad: object) -> None:
    fp = fingerprint()
    error = _refused(ledger, fp, entry_document(claim(fp), fingerprint=bad))
    assert error.reason.startswith("fingerprint")


def test_an_entry_copied_under_another_fingerprint_is_refused(ledger: Ledger) -> None:
    """A valid entry, but of another request: reusing its images would serve the wrong ones."""
    fp, other = fingerprint(), fingerprint()
    error = _refused(ledger, fp, stored(other).to_json())
    assert "fingerprint" in error.reason


def test_a_refused_entry_can_still_be_replaced_once_repaired(ledger: Ledger) -> None:
    """Unreadable stops readers; the repair is an edit of the store (here: the tamperer writes it back)."""
    fp = fingerprint()
    ledger.store.create(claim(fp))
    ledger.tamper(fp, entry_document(claim(fp), state=SECRET))
    with pytest.raises(LedgerEntryUnreadableError):
        ledger.store.read(fp)
    ledger.tamper(fp, claim(fp).to_json())
    assert ledger.store.read(fp)[0] == claim(fp)  # type: ignore[index]
