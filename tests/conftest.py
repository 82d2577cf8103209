"""Shared fixtures. Hypothesis profiles keep the suite within a few minutes on 2 cores."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from fastloss import _config

settings.register_profile(
    "default", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def pointwise_path(monkeypatch):
    """``pointwise_path("serial" | "parallel")`` makes every pointwise call of the test take that path.

    The pointwise kind picks its path by size and measured speed (see ``fastloss.kinds.pointwise.host.run_driver``);
    a test that must exercise one path says so instead of relying on a size.
    """

    def force(path: str) -> None:
        big = 1 << 62
        serial = path == "serial"
        monkeypatch.setattr(_config, "POINTWISE_SERIAL_BELOW", big if serial else 0)
        monkeypatch.setattr(_config, "POINTWISE_PARALLEL_FROM", big if serial else 0)

    return force
