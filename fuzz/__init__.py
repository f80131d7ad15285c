"""Atheris fuzz targets for the two parsers that read untrusted text: the rule language and request bodies."""
from __future__ import annotations

import sys
from typing import Callable


def fuzz(load: Callable[[], None], test_one_input: Callable[[bytes], None]) -> None:
    """Run one target under atheris: its modules under test imported (by `load`) with coverage
    instrumentation, then `test_one_input` fed with atheris' inputs (its flags from sys.argv)."""
    import atheris
    with atheris.instrument_imports(include=["model_handler"]):
        load()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
