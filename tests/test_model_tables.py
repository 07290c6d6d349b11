"""
The emulator's model table (written from the API documentation) against the provider's: any drift fails.

The emulator validates as the service does, the provider validates before any billable request; if the two
tables disagree, either the provider refuses what the service accepts or (worse) the provider accepts what
the service refuses after billing nothing but the user's time. Compared per model: n, sizes (the fixed list,
or the side and pixel range), the gateway's default size, the prompt and negative prompt lengths; and the
generic limits of unknown models. The quotas and the native default size exist only in the emulator's table
(the provider has no quota table and always sends a size).
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_imggen import models as provider
from airflow_provider_imggen.emulator.models import GENERIC_LIMITS, MODEL_LIMITS


def _emulator_view(limits: dict[str, Any]) -> dict[str, Any]:
    fixed = limits["sizes"] is not None
    return {
        "max_n": limits["max_n"],
        "default_size": limits["default_size"],
        "sizes": sorted(limits["sizes"]) if fixed else None,
        "min_side": None if fixed else limits["min_side"],
        "max_side": None if fixed else limits["max_side"],
        "max_pixels": None if fixed else limits["max_pixels"],
        "max_prompt_chars": limits["max_prompt_chars"],
        "max_negative_prompt_chars": limits["max_negative_prompt_chars"],
    }


def _provider_view(spec: provider.ModelSpec) -> dict[str, Any]:
    fixed = spec.fixed_sizes is not None
    return {
        "max_n": spec.max_n,
        "default_size": spec.default_size,
        "sizes": sorted(spec.fixed_sizes) if spec.fixed_sizes is not None else None,
        "min_side": None if fixed else spec.min_side,
        "max_side": None if fixed else spec.max_side,
        "max_pixels": None if fixed else spec.max_pixels,
        "max_prompt_chars": spec.max_prompt_chars,
        "max_negative_prompt_chars": spec.max_negative_prompt_chars,
    }


@pytest.mark.parametrize("model", sorted(set(MODEL_LIMITS) | set(provider.KNOWN_MODELS)))
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


def test_generic_limits_agree() -> None:
    assert GENERIC_LIMITS["max_n"] == provider.GENERIC_MAX_N
    assert GENERIC_LIMITS["default_size"] == provider.DEFAULT_SIZE


def test_every_documented_model_has_its_quota() -> None:
    for model, limits in MODEL_LIMITS.items():
        assert (limits["submissions_per_second"], limits["concurrent_tasks"]) == (2.0, 2), model
