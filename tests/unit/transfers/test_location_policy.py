"""Storage locations compared with the DAG's prefixes, segment by segment, as written."""

from __future__ import annotations

import pytest

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.transfers.location_policy import is_allowed, parse_prefixes

PREFIXES = parse_prefixes(["s3://renders/campaigns/", "/data/images", "s3://aws_prod@archive/"])


@pytest.mark.parametrize(
    ("location", "allowed"),
    [
        ("s3://renders/campaigns/a.png", True),
        ("S3://renders/campaigns/2026/a.png", True),  # the scheme is case-insensitive, the rest is not
        ("s3://renders/campaigns", False),  # the prefix itself is no object
        ("s3://renders/campaigns-old/a.png", False),
        ("s3://Renders/campaigns/a.png", False),
        ("s3://renders/campaigns/../secret.png", False),
        ("s3://renders/campaigns/%2e%2e/secret.png", False),
        ("s3://renders/campaigns/a.png?versionId=1", False),
        ("s3://renders/campaigns/a.png#x", False),
        ("s3://other@renders/campaigns/a.png", False),  # another connection's credentials
        ("s3://aws_prod@archive/x/y.png", True),
        ("/data/images/a.png", True),
        ("file:///data/images/a.png", True),
        ("file://localhost/data/images/a.png", False),
        ("/data/images/./a.png", False),
        ("/data/images\\..\\x.png", False),
        ("/data/imagesX/a.png", False),
        ("gs://renders/campaigns/a.png", False),
        ("renders/campaigns/a.png", False),
        ("", False),
        # Empty segments: ObjectStoragePath reads file:////data/... below the working directory, and
        # s3fs s3://b//k as the key "/k" (found by a hostile review).
        ("//data/images/a.png", False),
        ("file:////data/images/a.png", False),
        ("/data//images/a.png", False),
        ("/data/images/a.png/", False),
        ("s3://renders//campaigns/a.png", False),
        ("s3://renders/campaigns//a.png", False),
        ("s3:////renders/campaigns/a.png", False),
        ("s3:/renders/campaigns/a.png", False),
        # What urlsplit raises on: refused, never a ValueError quoting the text.
        ("s3://[secret-token-123]/campaigns/a.png", False),
        ("s3://[::1/campaigns/a.png", False),
        ("s3://renders\uff0fx/campaigns/a.png", False),
    ],
)
def test_locations_under_the_prefixes(location: str, allowed: bool) -> None:
    assert is_allowed(location, PREFIXES) is allowed


def test_nothing_is_allowed_without_prefixes() -> None:
    assert not is_allowed("s3://renders/campaigns/a.png", parse_prefixes(None))


@pytest.mark.parametrize(
    "value",
    [
        "s3://a/",
        ["a/b"],
        ["/"],
        ["file:///"],
        ["s3://a/{{ ds }}/"],
        [None],
        ["s3://a/?x"],
        ["s3:///renders/"],
        ["s3://"],
        ["s3://a//b/"],
        ["s3://[x]/"],
    ],
)
def test_bad_prefixes_name_the_parameter(value: object) -> None:
    with pytest.raises(ImageGenerationValidationError, match="location_prefixes"):
        parse_prefixes(value)
