"""`python -m examples.datasets --summary [--full] [--seed N] [names...]`: fetch and describe."""
from __future__ import annotations

import argparse
import sys

from examples.datasets import SCENARIOS, load_scenarios
from examples.datasets.fetch import DatasetFetchError, cache_dir
from examples.datasets.summary import describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.datasets", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(SCENARIOS)}")
    parser.add_argument("--summary", action="store_true", help="print what each scenario shifts")
    parser.add_argument("--full", action="store_true", help="full sizes instead of quick ones")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        scenarios = load_scenarios(args.names or None, seed=args.seed, quick=not args.full)
    except (DatasetFetchError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    if not args.summary:
        print(f"{len(scenarios)} scenarios ready; archives cached in {cache_dir()}")
        return 0
    for scenario in scenarios:
        print(describe(scenario))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
