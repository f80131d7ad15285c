"""Fixtures for tests/chaos: the sandbox API (with the SelfHealingModel CRD) and a namespace, taken from
the operator tests' conftest so both folders start the sandbox the same way."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "operator" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_operator_fixtures", _path)
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

sandbox = _fixtures.sandbox
namespace = _fixtures.namespace
