"""Side-by-side benchmarks: each compares selfheal with baselines in one run and prints ratios."""
