"""The docstring examples of the losses, metrics, checks and temperature scaling run as tests.

``--doctest-modules`` would also import the package's heavy modules (Lightning, Hydra); these four import torch,
torchmetrics and numpy only. Every example must pass, and every module must hold some.
"""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["ceexp.checks", "ceexp.losses", "ceexp.metrics", "ceexp.calibration"]


def run_examples(module) -> tuple[doctest.TestResults, str]:
    """Run every example in ``module`` (module, class, method and function docstrings, private ones included);
    return the results and the report of the failures."""
    runner = doctest.DocTestRunner()
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=report.append)
    return runner.summarize(verbose=False), "".join(report)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    results, report = run_examples(importlib.import_module(name))
    assert results.attempted > 0, f"{name} has no docstring examples"
    assert results.failed == 0, report


def test_a_wrong_example_fails():
    module = type(doctest)("example_module")
    module.__doc__ = ">>> 1 + 1\n3\n"
    results, report = run_examples(module)
    assert results.attempted == 1 and results.failed == 1 and "Expected:\n    3\nGot:\n    2" in report
