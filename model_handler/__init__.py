"""selfheal's ML core and pod side.

The frozen-backbone + reflexive-adapter model, the symbolic rule language, mergeable drift
sketches, label-free healing, the promotion gate and the adapter registry live here, shared by the
TorchServe handler, the healing Job (`python -m model_handler.heal`) and the benchmarks. Nothing in
this package imports Kubernetes; only `handler.py` imports TorchServe.
"""
