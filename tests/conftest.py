"""Fixtures shared by the test modules that serve the trained fraud example."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small served fraud model directory (model, reference, rules), one per test module; a module
    that needs another model defines its own `model_dir`."""
    from examples.fraud.train import build
    out = tmp_path_factory.mktemp("fraud-model")
    build(out, rows=3000, seed=0)
    return out
