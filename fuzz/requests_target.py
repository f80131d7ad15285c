"""Fuzz the request parser: any bytes as a TorchServe request body must give a finite float32 [N, 4]
array or a RequestError with a 4xx status and a message; any other exception is a crash (a 500, and
the failure of every other request in the batch).

    PYTHONSAFEPATH=1 .venv/bin/python -m fuzz.requests_target -atheris_runs=100000 fuzz/corpus/requests
"""
from __future__ import annotations

from fuzz import fuzz

FEATURES = ["amount", "hour", "distance", "is_new"]
_parser = None


def _load() -> None:
    global _parser, _RequestError, _np
    import numpy as np

    from model_handler.requests import RequestError, RequestParser
    _parser, _RequestError, _np = RequestParser(FEATURES, max_rows=64), RequestError, np


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    if _parser is None:
        _load()
    try:
        out = _parser.parse(data)
    except _RequestError as error:
        if error.status not in (400, 413, 422) or not error.message:
            raise AssertionError(f"unclear RequestError for {data!r:.200}: {error.status} {error.message!r}") from None
        return
    if out.dtype != _np.float32 or out.ndim != 2 or out.shape[1] != len(FEATURES) or not _np.isfinite(out).all():
        raise AssertionError(f"bad array for {data!r:.200}: {out.dtype} {out.shape}")


def main() -> None:
    fuzz(_load, TestOneInput)


if __name__ == "__main__":
    main()
