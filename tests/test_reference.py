"""The references (``fastloss.reference``): one for every registered loss, with its declared defaults.

What they compute is checked against the kernels by each kind's tests and by the benchmark's
tests (the naive peers are the references at the input's dtype).
"""

from __future__ import annotations

import inspect

import pytest

import fastloss as fl
from fastloss.reference import REFERENCES


@pytest.mark.parametrize("name", fl.names())
def test_every_registered_loss_has_a_reference(name):
    assert name in REFERENCES, (
        f"{name} has no reference: add a function named {name}, decorated with @reference, to the "
        "module of its family in fastloss/reference/ (it is also the benchmark's naive peer)"
    )


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_a_reference_takes_the_declared_parameters_with_their_defaults(name):
    """The naive peers are called with the declared defaults; a reference called without them
    (by hand, or by a test that leaves one out) must mean the same loss."""
    assert name in fl.names(), f"fastloss/reference/ has a reference for {name}, which is not registered"
    signature = inspect.signature(REFERENCES[name]).parameters
    for p in fl.get(name).spec.params:
        assert p.name in signature, f"{name}: the reference does not take {p.name}"
        assert signature[p.name].default == p.default, f"{name}: {p.name} defaults differ"
    assert signature["xp"].kind is inspect.Parameter.KEYWORD_ONLY
