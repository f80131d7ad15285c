"""Fuzz the rule language: any bytes, read as a rule over four features, must parse to a tree or raise
RuleError with a position inside the text; a tree that parses must give the same verdicts on the torch
and numpy backends (NaN and inf rows included).

    PYTHONSAFEPATH=1 .venv/bin/python -m fuzz.rules_target -atheris_runs=100000 fuzz/corpus/rules
"""
from __future__ import annotations

from fuzz import fuzz

FEATURES = ["amount", "hour", "merchant_age", "is_new"]
_m = None   # the modules under test, imported by _load (instrumented when run by atheris)


def _load() -> None:
    global _m
    import types

    import numpy as np
    import torch

    from model_handler import rules
    nan, inf = float("nan"), float("inf")
    rows = np.array([[0, 0, 0, 0], [1, 2, 3, 1], [-5, 0.5, 1e30, 0], [nan, 1, inf, -inf], [inf, -inf, nan, 0],
                     [3.4e38, -1e-45, 7, 1]], dtype=np.float32)
    _m = types.SimpleNamespace(np=np, torch=torch, rules=rules, rows=rows)


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    if _m is None:
        _load()
    rules, np = _m.rules, _m.np
    text = data.decode("utf-8", errors="replace")
    try:
        tree = rules.parse(text, FEATURES)
    except rules.RuleError as error:
        if not error.message or (error.position is not None and not 0 <= error.position <= len(text)):
            raise AssertionError(f"unclear RuleError for {text!r}: {error!r} at {error.position}") from None
        return
    with np.errstate(all="ignore"):
        on_numpy = np.broadcast_to(rules.compile_node(tree, rules.NUMPY)(_m.rows), (len(_m.rows),))
    on_torch = rules.compile_node(tree, rules.TORCH)(_m.torch.from_numpy(_m.rows)).numpy()
    if not np.array_equal(on_numpy, on_torch, equal_nan=tree.type == "num"):
        raise AssertionError(f"torch and numpy disagree on {text!r}: {on_torch} != {on_numpy}")


def main() -> None:
    fuzz(_load, TestOneInput)


if __name__ == "__main__":
    main()
