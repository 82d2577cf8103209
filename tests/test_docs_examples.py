"""Every example in a loss declaration (and so in its docstring) runs and prints what it claims."""

from __future__ import annotations

import doctest

import pytest

import fastloss as fl


@pytest.mark.parametrize("name", fl.names())
def test_declared_example_runs(name):
    loss = fl.get(name)
    assert loss.spec.example.strip(), f"{name} declares no example"
    parser = doctest.DocTestParser()
    test = parser.get_doctest(loss.__doc__, {}, f"fastloss.{name}", None, 0)
    assert test.examples, f"{name}: no doctest examples found in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, f"{name}: {runner.failures} doctest failure(s); run its example by hand"
