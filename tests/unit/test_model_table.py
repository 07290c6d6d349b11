"""
The emulator's model table (written from the API documentation) against the provider's: any drift fails.

The emulator validates as the service does, the provider validates before any billable request; if the two
tables disagree, either the provider refuses what the service accepts or (worse) the provider accepts what
the service refuses after billing nothing but the user's time. Compared per model: n, sizes (the fixed list,
or the side, pixel and aspect-ratio range), the gateway's default size, the prompt and negative prompt
lengths, the endpoints serving it (asynchronous task API, synchronous multimodal generation) and the quota;
and the generic limits of unknown models; and the model table of docs/models.md against the provider's.
The native default size exists only in the emulator's table (the provider sends a size only when set).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_imggen import model_table as provider
from airflow_provider_imggen.emulator.models import GENERIC_LIMITS, MODEL_LIMITS

# The two tables name the endpoints each their own way (the emulator by its API surfaces): the task API's
# text2image, image2image and image-generation surfaces are all the provider's "async" (its table says
# which surface serves a model).
_EMULATOR_ENDPOINTS = {
    "task": "async",
    "image2image": "async",
    "image-generation": "async",
    "multimodal": "sync",
}
_SURFACES = {"task": "text2image", "image2image": "image2image", "image-generation": "image-generation"}
# "No bound" is None in the emulator's table and an extreme value in the provider's.
_NO_SIDE_LIMIT = (1, 1 << 16)
# Every model both tables know is compared (issue 23 sourced the last ones the emulator played alone).
DELIBERATELY_UNKNOWN: frozenset[str] = frozenset()


def _emulator_view(limits: dict[str, Any]) -> dict[str, Any]:
    fixed = limits["sizes"] is not None
    rate = limits["submissions_per_second"]
    return {
        "max_n": limits["max_n"],
        "default_size": limits["default_size"],
        "sizes": sorted(limits["sizes"]) if fixed else None,
        "min_side": None if fixed or limits["max_side"] is None else limits["min_side"],
        "max_side": None if fixed else limits["max_side"],
        "min_pixels": None if fixed else limits["min_pixels"],
        "max_pixels": None if fixed else limits["max_pixels"],
        "max_aspect_ratio": None if fixed else limits["max_aspect_ratio"],
        "max_prompt_chars": limits["max_prompt_chars"],
        "max_negative_prompt_chars": limits["max_negative_prompt_chars"],
        "endpoints": sorted(_EMULATOR_ENDPOINTS[name] for name in limits["endpoints"]),
        "task_surface": next((_SURFACES[name] for name in limits["endpoints"] if name in _SURFACES), None),
        # requests per second, requests back to back, concurrent
        "quota": (round(rate, 6), limits.get("burst") or max(1.0, rate), limits["concurrent_tasks"]),
        **_emulator_inputs(limits),
    }


def _emulator_inputs(limits: dict[str, Any]) -> dict[str, Any]:
    if not limits.get("max_input_images"):
        return {"input_images": (0, 0), "input_sides": None, "input_bytes": None, "size_settable": True}
    return {
        "input_images": (limits["min_input_images"], limits["max_input_images"]),
        "input_sides": (limits["min_input_side"], limits["max_input_side"]),
        "input_bytes": limits["max_input_bytes"],
        "size_settable": limits.get("size_settable", True),
        "input_alpha": not limits.get("refuses_alpha", False),
    }


def _provider_inputs(spec: provider.ModelSpec) -> dict[str, Any]:
    if not spec.max_input_images:
        return {"input_images": (0, 0), "input_sides": None, "input_bytes": None, "size_settable": True}
    return {
        "input_images": (spec.min_input_images, spec.max_input_images),
        "input_sides": (spec.min_input_side, spec.max_input_side),
        "input_bytes": spec.max_input_bytes,
        "size_settable": spec.size_settable,
        "input_alpha": spec.input_alpha,
    }


def _provider_view(spec: provider.ModelSpec) -> dict[str, Any]:
    fixed = spec.fixed_sizes is not None
    sides = (spec.min_side, spec.max_side)
    quota = spec.quota
    assert quota is not None, f"{spec.name} has no quota in the provider's table"
    return {
        "max_n": spec.max_n,
        "default_size": spec.default_size,
        "sizes": sorted(spec.fixed_sizes) if spec.fixed_sizes is not None else None,
        "min_side": None if fixed or sides == _NO_SIDE_LIMIT else spec.min_side,
        "max_side": None if fixed or sides == _NO_SIDE_LIMIT else spec.max_side,
        "min_pixels": None if fixed or spec.min_pixels <= 1 else spec.min_pixels,
        "max_pixels": None if fixed else spec.max_pixels,
        "max_aspect_ratio": None if fixed else spec.max_aspect_ratio,
        "max_prompt_chars": spec.max_prompt_chars,
        "max_negative_prompt_chars": spec.max_negative_prompt_chars,
        "endpoints": sorted(spec.endpoints),
        "task_surface": spec.task_surface if "async" in spec.endpoints else None,
        "quota": (round(quota.requests / quota.window_seconds, 6), float(quota.requests), quota.concurrent),
        **_provider_inputs(spec),
    }


@pytest.mark.parametrize(
    "model", sorted((set(MODEL_LIMITS) | set(provider.KNOWN_MODELS)) - DELIBERATELY_UNKNOWN)
)
def test_model_limits_agree(model: str) -> None:
    assert model in provider.KNOWN_MODELS, (
        f"{model} is documented (emulator table) but unknown to the provider, which applies only the generic "
        f"limits to it: {_emulator_view(MODEL_LIMITS[model])}"
    )
    assert model in MODEL_LIMITS, f"{model} is in the provider's table but not in the documented one"
    documented = _emulator_view(MODEL_LIMITS[model])
    ours = _provider_view(provider.KNOWN_MODELS[model])
    drift = {key: (ours[key], documented[key]) for key in documented if ours[key] != documented[key]}
    assert not drift, f"{model}: provider vs documented limits differ (provider, docs): {drift}"


def test_the_newer_families_go_where_they_live() -> None:
    """
    api-notes §7: the 2026 families are synchronous first (text2image answers them 403; wan2.6 / wan2.7 also
    have the task API's image-generation surface); wan2.5-i2i-preview is the task API's image2image.
    """
    for model in (
        "qwen-image-2.1-pro",
        "qwen-image-3.0",
        "qwen-image-3.0-pro",
        "z-image-turbo",
        "wan2.7-image",
    ):
        assert provider.endpoints_of(model)[0] == "sync", model
        assert "task" not in MODEL_LIMITS[model]["endpoints"], model  # text2image answers them 403
    assert provider.task_surface_of("wan2.7-image") == "image-generation"
    assert provider.endpoints_of("wan2.5-i2i-preview") == ("async",)
    assert MODEL_LIMITS["wan2.5-i2i-preview"]["endpoints"] == ("image2image",)


def test_generic_limits_agree() -> None:
    assert GENERIC_LIMITS["max_n"] == provider.GENERIC_MAX_N
    # No provider default size: a size left unset is not sent, the service (here, the emulator) picks it.
    assert not hasattr(provider, "DEFAULT_SIZE")


def test_every_documented_model_has_its_quota() -> None:
    """
    §6/§7: per account and model; two per minute (the -max and -pro models), 5/s and 5 concurrent (wan2.5),
    1/s and 5 concurrent (wan2.6, Beijing), 2/s without a concurrency quota (the other synchronous-only
    models), or 2/s and 2 concurrent (the task API's).
    """
    per_minute = {"qwen-image-max", "qwen-image-2.0-pro", "qwen-image-edit-max"}
    for model, limits in MODEL_LIMITS.items():
        quota = (round(limits["submissions_per_second"] * 60, 6), limits["concurrent_tasks"])
        rate = (limits["submissions_per_second"], limits["concurrent_tasks"])
        if model in per_minute:
            assert quota == (2.0, None), model
        elif model.startswith("wan2.5"):
            assert rate == (5.0, 5), model
        elif model.startswith("wan2.6"):
            assert rate == (1.0, 5), model
        elif "task" not in limits["endpoints"] and "image2image" not in limits["endpoints"]:
            assert rate == (2.0, None), model
        else:
            assert rate == (2.0, 2), model


def test_the_issue_models_are_in_both_tables() -> None:
    """Issue 15's list: a model dropped from both tables at once would pass the diff above."""
    listed = {
        "qwen-image",
        "qwen-image-plus",
        "qwen-image-max",
        "qwen-image-2.0",
        "qwen-image-2.0-pro",
        "wan2.5-t2i-preview",
        "wan2.2-t2i-flash",
        "wan2.2-t2i-plus",
        "wanx2.1-t2i-turbo",
        "wanx2.1-t2i-plus",
        "wanx2.0-t2i-turbo",
        # issue 23: the editing models and the 2026 families
        "qwen-image-edit",
        "qwen-image-edit-plus",
        "qwen-image-edit-max",
        "qwen-image-2.1-pro",
        "qwen-image-3.0",
        "qwen-image-3.0-pro",
        "z-image-turbo",
        "wan2.5-i2i-preview",
        "wan2.6-image",
        "wan2.6-t2i",
        "wan2.7-image",
        "wan2.7-image-pro",
    }
    assert listed <= set(MODEL_LIMITS)
    assert listed <= set(provider.KNOWN_MODELS)


def test_every_provider_model_cites_its_page() -> None:
    for spec in provider.KNOWN_MODELS.values():
        assert spec.docs.startswith("Model Studio: "), spec.name


MODELS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def _docs_model_rows() -> dict[str, list[str]]:
    """The rows of the table under docs/models.md's "## Models" heading (the first table after it)."""
    text = MODELS_PAGE.read_text()
    section = re.split(r"^## Models$", text, maxsplit=1, flags=re.MULTILINE)[1]
    table = next(block for block in section.split("\n\n") if block.startswith("| model |"))
    rows = {}
    for line in table.splitlines():
        match = re.match(r"\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_the_docs_model_table_says_what_the_provider_checks() -> None:
    """
    docs/models.md "Models": one row per known model; endpoint, n, input images, prompt limits, quota and
    page agree.
    """
    rows = _docs_model_rows()
    assert set(rows) == set(provider.KNOWN_MODELS)
    for model, (endpoint, sizes, n, inputs, prompts, quota, docs) in rows.items():
        spec = provider.KNOWN_MODELS[model]
        if spec.max_input_images == 0:
            assert inputs.startswith("none"), model
        else:
            assert inputs.startswith(f"{spec.min_input_images}-{spec.max_input_images}"), model
            assert f"each side {spec.min_input_side}-{spec.max_input_side}" in inputs, model
        assert ("sync only" in endpoint) == (spec.endpoints == ("sync",)), model
        assert ("task API" in endpoint) == ("async" in spec.endpoints), model
        assert ("or sync" in endpoint) == (spec.endpoints == ("async", "sync")), model
        assert n.split(" ")[0] == ("1" if spec.max_n == 1 else f"1-{spec.max_n}"), model
        limits = re.sub(r" \*\([a-z]+\)\*", "", prompts)
        assert limits == f"{spec.max_prompt_chars} / {spec.max_negative_prompt_chars}", model
        assert re.sub(r" \*\([a-z]+\)\*", "", quota) == spec.quota.describe(), model  # type: ignore[union-attr]
        assert spec.docs in docs and provider.DOC_RATE_LIMITS in docs, model
        if spec.fixed_sizes is not None and "as qwen-image" not in sizes:
            assert all(f"{w}\\*{h}" in sizes for w, h in spec.fixed_sizes), model
