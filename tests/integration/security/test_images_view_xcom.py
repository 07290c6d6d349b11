"""
The Images view trusts an XCom no more than an API answer, driven through its routes for real: a migrated
metadata database (SQLite) holding a serialized DAG of the provider's operators and a run of it, XCom rows
written as a user allowed to edit XCom would write them, Airflow's own auth manager with a real JWT, and the
stored images in moto_server S3.

- A stored image without a sha256 the view can verify (none, ``""``, upper case) is never served, whatever
  object its key names; with one, only bytes that hash to it are served, and only with the recorded size.
- Whatever an XCom record holds (wrong types, huge, negative or NaN numbers, nested lists, unicode keys,
  missing fields, values the XCom decoder cannot even read), the pages answer 200 with a broken tile in its
  place that shows nothing of it; that tile's thumbnail and image answer 404; nothing answers 500. One bad
  field at a time (each named case), then a seeded fuzz of many fields of many records at once.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image

from airflow_provider_imggen.records import GenerationRecord, ImageRecord, StoredImageRecord
from tests.conftest import AIRFLOW_BIN
from tests.s3_fixtures import S3Bucket

DAG_ID = "imggen_view_xcom"
RUN_ID = "manual__view_xcom"
DAG_FILE = """
import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

with DAG(dag_id="imggen_view_xcom", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    generate = ImageGenerationOperator(task_id="generate", prompt="a mug", model="wan2.2-t2i-flash")
    ImageGenerationToS3Operator(
        task_id="store", generation=generate.output, s3_bucket="b", s3_key="{index}.png"
    )
"""
JWT_SECRET = "images-view-xcom-test-secret-" + "0" * 40
# Written into bad records: the pages must show none of it.
MARKER = "XCOM-CONTENT-MARKER"


@dataclass
class View:
    """The Images view's app on a real metadata database, called with an admin's JWT."""

    client: Any
    token: str

    def get(self, route: str, **params: object) -> Any:
        return self.client.get(
            f"/{route}",
            params={"dag_id": DAG_ID, "run_id": RUN_ID, **params},
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def push(self, task_id: str, value: object, *, raw: bool = False) -> None:
        """The task's ``return_value`` as an XCom editor writes it (``raw``: JSON text the decoder reads)."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            XComModel.set(
                key="return_value",
                value=value,
                dag_id=DAG_ID,
                task_id=task_id,
                run_id=RUN_ID,
                serialize=not raw,
                session=session,
            )

    def clear(self) -> None:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            for task_id in ("generate", "store"):
                XComModel.clear(dag_id=DAG_ID, task_id=task_id, run_id=RUN_ID, session=session)


@pytest.fixture(scope="module")
def view_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[View]:
    """
    A metadata database of its own (migrated and the DAG serialized by Airflow's CLI), the process's ORM
    pointed at it for this module only, a DAG run, and SimpleAuthManager issuing the admin's token.
    """
    home = tmp_path_factory.mktemp("images-view-xcom")
    (home / "dags").mkdir()
    (home / "dags" / "imggen_view_xcom.py").write_text(DAG_FILE)
    url = f"sqlite:///{home}/airflow.db"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
    }
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([str(AIRFLOW_BIN), *command], env=env, check=True, capture_output=True, timeout=300)

    from airflow import settings
    from airflow.api_fastapi import app as api_app
    from airflow.configuration import conf

    from airflow_provider_imggen.ui import run_data

    previous = {
        ("database", "sql_alchemy_conn"): conf.get("database", "sql_alchemy_conn"),
        ("api_auth", "jwt_secret"): conf.get("api_auth", "jwt_secret", fallback=""),
    }
    previous_manager = api_app._AuthManagerState.instance
    conf.set("database", "sql_alchemy_conn", url)
    conf.set("api_auth", "jwt_secret", JWT_SECRET)
    settings.configure_vars()
    settings.reconfigure_orm()
    try:
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from airflow.models.dagbag import DBDagBag
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState
        from airflow.utils.types import DagRunTriggeredByType, DagRunType
        from starlette.testclient import TestClient

        from airflow_provider_imggen.ui.app import create_app

        with create_session() as session:
            dag = DBDagBag().get_latest_version_of_dag(DAG_ID, session=session)
            assert dag is not None, "the DAG was not serialized"
            dag.create_dagrun(
                run_id=RUN_ID,
                run_after=datetime.now(UTC),
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.TEST,
                state=DagRunState.SUCCESS,
                session=session,
            )
        manager = api_app.create_auth_manager()
        token = manager.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
        # A 500 must come back as a 500 (the app's own handler), not as an exception in the test.
        yield View(TestClient(create_app(), raise_server_exceptions=False), token)
    finally:
        run_data._dag_bag = None
        api_app._AuthManagerState.instance = previous_manager
        for (section, key), value in previous.items():
            conf.set(section, key, value)
        settings.configure_vars()
        settings.reconfigure_orm()


@pytest.fixture
def view(view_app: View, s3: S3Bucket) -> Iterator[View]:
    """The view with the run's XComs cleared, and ``aws_default`` (the transfer's connection) on moto."""
    view_app.clear()
    yield view_app
    view_app.clear()


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 32), colour).save(out, "PNG")
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(bucket: str, key: str, data: bytes, index: int = 0, **change: object) -> dict[str, Any]:
    """A transfer's XCom entry as the transfer writes it, with ``change`` applied."""
    record = StoredImageRecord(
        s3_uri=f"s3://{bucket}/{key}",
        bucket=bucket,
        key=key,
        bytes=len(data),
        sha256=sha256(data),
        content_type="image/png",
        width=48,
        height=32,
        generation=0,
        index=index,
        model="wan2.2-t2i-flash",
        seed=7,
        prompt="a mug",
        request_id="req-1",
        skipped=False,
    ).to_dict()
    record.update(change)
    return record


def generation(**change: object) -> dict[str, Any]:
    """A generation's XCom (two images, one failed) as the operator writes it, with ``change`` applied."""
    from airflow_provider_imggen.sealed_urls import seal

    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    images = [
        ImageRecord(
            index=index,
            seed=7 + index,
            url="https://results.example.com/x.png?Signature=***",
            url_sealed=seal(f"https://results.example.com/{index}.png?Signature=s"),
            url_expires_at=expires,
        )
        for index in range(2)
    ]
    record = GenerationRecord(
        model="wan2.2-t2i-flash", prompt="a mug", request_id="req-1", images=tuple(images)
    )
    value = record.to_dict()
    value["failed_images"] = [{"index": 2, "code": "DataInspectionFailed", "message": "refused"}]
    value.update(change)
    return value


def tiles(page: str) -> list[tuple[str, str]]:
    """(kind, position) of each tile of a page."""
    return re.findall(
        r'<figure class="tile \w+" data-kind="(\w+)" data-task="[^"]*" data-position="(\d+)"', page
    )


# -- a stored image is served only with a sha256 its bytes have ------------------------------------------


@pytest.mark.parametrize(
    "forged",
    ["empty-sha256", "upper-case-sha256", "right-sha256-wrong-size"],
)
def test_an_edited_record_serves_no_other_object(view: View, s3: S3Bucket, forged: str) -> None:
    """
    The attack of issue 25: a record whose key names another object the task's AWS connection can read,
    with a sha256 the view cannot verify against it (or a size that is not the object's).
    """
    image, secret = png((200, 30, 30)), png((10, 10, 10))
    s3.client.put_object(Bucket=s3.name, Key="campaign/0.png", Body=image)
    s3.client.put_object(Bucket=s3.name, Key="private/payroll.png", Body=secret)
    change: dict[str, object] = {
        "empty-sha256": {"sha256": ""},
        "upper-case-sha256": {"sha256": sha256(secret).upper()},
        "right-sha256-wrong-size": {"bytes": len(secret) + 1},
    }[forged]
    view.push(
        "store",
        [
            stored(s3.name, "campaign/0.png", image),
            stored(s3.name, "private/payroll.png", secret, 1, **change),
        ],
    )

    # The control: the transfer's own record is served, byte for byte.
    served = view.get("image", task_id="store", map_index=-1, n=0)
    assert (served.status_code, served.content) == (200, image)
    assert view.get("thumbnail", task_id="store", map_index=-1, n=0).status_code == 200

    for route in ("image", "thumbnail"):
        answer = view.get(route, task_id="store", map_index=-1, n=1)
        assert answer.status_code in (404, 502), (route, answer.status_code)
        assert (
            answer.content != secret
            and b"\x89PNG" not in answer.content
            and b"\xff\xd8" not in answer.content
        )
    # A sha256 that is not one: the record is a broken tile, linking to nothing.
    if forged != "right-sha256-wrong-size":
        check_broken(view, "store", good_positions=["0"], broken_positions=["1"])


# -- no XCom content makes a 500: a broken tile in its place ---------------------------------------------

HUGE = 10**400  # 401 digits: JSON carries it, a float cannot
NAN = float("nan")
# One bad field of a stored-image record each: (field, value); None as value removes the field.
BAD_STORED_FIELDS = [
    ("index", "²"),
    ("index", "9" * 4000),
    ("index", -1),
    ("index", 10**30),
    ("index", 1000),
    ("index", NAN),
    ("index", 1.5),
    ("index", True),
    ("index", [0]),
    ("index", {"nested": [[[]]]}),
    ("index", None),
    ("bytes", -5),
    ("bytes", HUGE),
    ("bytes", NAN),
    ("bytes", "1234"),
    ("width", HUGE),
    ("height", HUGE),
    ("height", -1),
    ("width", "1024"),
    ("sha256", None),
    ("sha256", "zz" * 32),
    ("sha256", ["a" * 64]),
    ("bucket", [MARKER]),
    ("bucket", "UPPER-" + MARKER),
    ("bucket", "../" + MARKER.lower()),
    ("bucket", None),
    ("key", [MARKER]),
    ("key", MARKER + "\nforged log line"),
    ("key", MARKER + "\x00"),
    ("key", "\ud800" + MARKER),
    ("key", MARKER * 60),
    ("key", ""),
    ("key", None),
    ("s3_uri", "s3://other-bucket/" + MARKER),
    ("content_type", "text/html"),
    ("seed", NAN),
    ("seed", HUGE),
    ("seed", MARKER),
    ("prompt", {"nested": [[[MARKER]]]}),
    ("prompt", MARKER * 2000),
    ("prompt", MARKER + "\x1b[31m"),
    ("request_id", [MARKER]),
    ("model", 5),
    ("skipped", "yes"),
    ("cost_per_image", "1e5"),
    ("cost_currency", ["CNY"]),
    ("cost_currency", "EUR"),
]


@pytest.mark.parametrize(("field", "value"), BAD_STORED_FIELDS, ids=lambda v: repr(v)[:24])
def test_a_bad_stored_image_field_is_a_broken_tile(
    view: View, s3: S3Bucket, field: str, value: object
) -> None:
    image = png((30, 200, 30))
    s3.client.put_object(Bucket=s3.name, Key="campaign/0.png", Body=image)
    good = stored(s3.name, "campaign/0.png", image)
    bad = stored(s3.name, "campaign/0.png", image, 1)
    if value is None:
        del bad[field]
    else:
        bad[field] = value
    view.push("store", [good, bad])
    check_broken(view, "store", good_positions=["0"], broken_positions=["1"])


BAD_TRANSFER_VALUES = [
    pytest.param(f"s3://bucket/{MARKER}", id="a-string"),
    pytest.param(5, id="a-number"),
    pytest.param({"bucket": "b", "key": MARKER}, id="a-dict"),
    pytest.param([[[[MARKER]]]], id="nested-lists"),
    pytest.param([{"bücket": "b", "ключ": MARKER, "🔑": 1}], id="unicode-keys"),
    pytest.param([{}], id="an-empty-record"),
    pytest.param([NAN], id="nan"),
]


@pytest.mark.parametrize("value", BAD_TRANSFER_VALUES)
def test_a_transfer_xcom_of_another_shape_is_a_broken_tile(view: View, value: object) -> None:
    view.push("store", value)
    check_broken(view, "store", good_positions=[], broken_positions=["0"])


# Values the XCom decoder itself cannot read: classes outside its allow list, nesting beyond recursion.
UNDECODABLE = [
    pytest.param(
        '{"__classname__": "os.system", "__version__": 1, "__data__": "' + MARKER + '"}', id="not-allowed"
    ),
    pytest.param(
        '[{"index": {"__classname__": "no.such.Type", "__version__": 1, "__data__": 0}}]', id="nested"
    ),
    pytest.param("[" * 5000 + "]" * 5000, id="too-deep"),
]


@pytest.mark.parametrize("text", UNDECODABLE)
@pytest.mark.parametrize("task_id", ["store", "generate"])
def test_an_xcom_the_decoder_cannot_read_is_a_broken_tile(view: View, task_id: str, text: str) -> None:
    view.push(task_id, text, raw=True)
    check_broken(view, task_id, good_positions=[], broken_positions=["0"])


# Bad generation records: (change to the record, the positions of good and broken tiles). The record shows
# images 0 and 1 (results, positions 0 and 1) then its failed image (position 2).
BAD_GENERATIONS = [
    # One image entry: a broken tile in its place, the others shown.
    pytest.param({"images": [{"index": "²"}, {"index": 1}]}, ["1", "2"], ["0"], id="image-index-superscript"),
    pytest.param({"images": [MARKER, {"index": 1}]}, ["1", "2"], ["0"], id="image-not-a-record"),
    pytest.param({"images": [{"index": -3}]}, ["1"], ["0"], id="image-index-negative"),
    pytest.param({"images": [{"index": 0, "seed": NAN}]}, ["1"], ["0"], id="image-seed-nan"),
    pytest.param({"images": [{"index": 0, "url_sealed": [MARKER]}]}, ["1"], ["0"], id="sealed-url-a-list"),
    pytest.param(
        {"images": [{"index": 0, "url_sealed": MARKER + " !"}]}, ["1"], ["0"], id="sealed-url-chars"
    ),
    pytest.param({"images": [{"index": 0, "url_expires_at": MARKER}]}, ["1"], ["0"], id="expiry-not-a-time"),
    pytest.param({"images": [{"index": 0, "sha256": MARKER}]}, ["1"], ["0"], id="image-sha256"),
    pytest.param({"failed_images": [{"index": "9" * 4000}]}, ["0", "1"], ["2"], id="failed-index-digits"),
    pytest.param(
        {"failed_images": [{"index": 2, "message": MARKER + "\x07"}]}, ["0", "1"], ["2"], id="failed-bell"
    ),
    # A field of the generation itself: one broken tile for the whole record.
    pytest.param({"images": "not a list"}, [], ["0"], id="images-not-a-list"),
    pytest.param({"prompt": {"nested": [MARKER]}}, [], ["0"], id="prompt-a-dict"),
    pytest.param({"seed": NAN}, [], ["0"], id="seed-nan"),
    pytest.param({"size": HUGE}, [], ["0"], id="size-huge"),
    pytest.param({"request_id": [[MARKER]]}, [], ["0"], id="request-id-nested"),
    pytest.param({"cost": {"currency": ["CNY"]}}, [], ["0"], id="cost-currency-a-list"),
    pytest.param(
        {"cost": {"billed_images": 10**3000, "currency": "CNY", "per_image": "1"}}, [], ["0"], id="cost-huge"
    ),
]
# Input images come first (positions 0...), then the images (1, 2) and the failed one (3); a run's gallery
# shows no input, broken or not.
BAD_INPUTS = [
    pytest.param({"uri": "s3://inputs/" + MARKER, "sha256": ""}, id="sha256-empty"),
    pytest.param({"uri": ["s3://inputs/in.png"]}, id="uri-a-list"),
    pytest.param({"uri": "s3://inputs/in.png", "conn_id": "{{ " + MARKER + " }}"}, id="conn-id-template"),
    pytest.param({"uri": "s3://inputs/in.png", "width": HUGE}, id="width-huge"),
]


@pytest.mark.parametrize(("change", "good", "broken"), BAD_GENERATIONS)
def test_a_bad_generation_field_is_a_broken_tile(
    view: View, change: dict[str, object], good: list[str], broken: list[str]
) -> None:
    view.push("generate", generation(**change))
    check_broken(view, "generate", good_positions=good, broken_positions=broken)


@pytest.mark.parametrize("entry", BAD_INPUTS)
def test_a_bad_input_image_is_a_broken_tile_beside_the_edit(view: View, entry: dict[str, object]) -> None:
    view.push("generate", generation(input_images=[entry]))
    check_broken(view, "generate", good_positions=["1", "2", "3"], broken_positions=["0"], in_gallery=False)


def check_broken(
    view: View,
    task_id: str,
    *,
    good_positions: list[str],
    broken_positions: list[str],
    in_gallery: bool = True,
) -> None:
    """Both pages answer 200 with the broken tiles in place and nothing of their content; no route 500s."""
    pages = [
        ("images", {"task_id": task_id}),
        ("images", {"task_id": task_id, "map_index": -1}),
        ("gallery", {}),
    ]
    for route, params in pages:
        page = view.get(route, **params)
        assert page.status_code == 200, (route, page.status_code, page.text[:200])
        expected = broken_positions if route == "images" or in_gallery else []
        shown = tiles(page.text)
        assert [position for kind, position in shown if kind == "broken"] == expected, (route, shown)
        assert MARKER not in page.text and MARKER.lower() not in page.text
        assert ("unreadable XCom record" in page.text) == bool(expected)
    shown = {position: kind for kind, position in tiles(view.get("images", task_id=task_id).text)}
    assert [shown.get(position) not in (None, "broken") for position in good_positions] == [True] * len(
        good_positions
    ), shown
    for position in broken_positions:
        for route in ("thumbnail", "image"):
            answer = view.get(route, task_id=task_id, map_index=-1, n=position)
            assert answer.status_code == 404, (route, position, answer.status_code)
            assert MARKER not in answer.text


# -- a seeded fuzz: many fields of many records at once --------------------------------------------------

FUZZ_SEED = 25


def odd_value(rng: random.Random, depth: int = 0) -> object:
    """A value no record field should hold, drawn from the shapes that break parsers."""
    choices: list[Any] = [
        None,
        True,
        -1,
        -(2**70),
        HUGE,
        NAN,
        float("inf"),
        1.5,
        "",
        "²",
        "9" * 4000,
        MARKER + "\n\x00\x1b[2J",
        "\ud800" + MARKER,
        "ключ-" + MARKER,
        MARKER * 3000,
        "s3://" + MARKER,
        "A" * 64,
    ]
    if depth < 3:
        choices += [[odd_value(rng, depth + 1)], {MARKER: odd_value(rng, depth + 1)}, [[[[[]]]]]]
    return rng.choice(choices)


# The fields of a generation record the view reads (the others it never looks at).
GENERATION_FIELDS = (
    "model",
    "prompt",
    "negative_prompt",
    "size",
    "seed",
    "request_id",
    "images",
    "failed_images",
    "input_images",
    "cost",
)


def mutated(rng: random.Random, record: dict[str, Any], fields: int) -> dict[str, Any]:
    """``record`` with ``fields`` of its fields (or of its entries' fields) replaced or removed."""
    record = {**record}
    generation_record = "images" in record
    for _ in range(fields):
        names = sorted(name for name in record if name in GENERATION_FIELDS or not generation_record)
        if not names:
            break
        target, name = record, rng.choice(names)
        value = record[name]
        if isinstance(value, list) and value and isinstance(value[0], dict) and rng.random() < 0.7:
            entries = [dict(entry) for entry in value]
            target, record[name] = rng.choice(entries), entries
            if not target:
                continue
            name = rng.choice(sorted(target))
        if rng.random() < 0.15:
            del target[name]
        else:
            target[name] = odd_value(rng)
    return record


def test_fuzzed_records_answer_200_with_broken_tiles_and_never_500(view: View, s3: S3Bucket) -> None:
    rng = random.Random(FUZZ_SEED)
    image = png((30, 30, 200))
    s3.client.put_object(Bucket=s3.name, Key="campaign/0.png", Body=image)
    transfer = [
        mutated(rng, stored(s3.name, "campaign/0.png", image, index), rng.randint(1, 3))
        for index in range(60)
    ]
    input_image = {"uri": f"s3://{s3.name}/campaign/0.png", "sha256": sha256(image), "bytes": len(image)}
    generations = [mutated(rng, generation(input_images=[input_image]), rng.randint(1, 3)) for _ in range(30)]
    view.push("store", transfer)
    view.push("generate", generations)

    for task_id, records in (("store", transfer), ("generate", generations)):
        page = view.get("images", task_id=task_id)
        assert page.status_code == 200, (task_id, page.text[:200])
        # A value that passes where it lands (any text is a prompt) is shown; nothing of a broken record is.
        broken_tiles = re.findall(r'<figure class="tile broken".*?</figure>', page.text)
        assert broken_tiles and not any(MARKER in tile or MARKER.lower() in tile for tile in broken_tiles)
        shown = tiles(page.text)
        # Most mutations make a record unreadable (some values, None say, are allowed where they land).
        assert sum(kind == "broken" for kind, _ in shown) >= len(records) // 3, shown
        for _, position in shown:
            for route in ("thumbnail", "image"):
                answer = view.get(route, task_id=task_id, map_index=-1, n=position)
                assert answer.status_code in (200, 404, 410, 502), (route, position, answer.status_code)
    assert view.get("gallery").status_code == 200
