"""Train the example fraud backbone and write everything a model archive needs.

    python -m examples.fraud.train --out build/fraud-model [--rows 40000] [--seed 0] [--store build/store]

Writes model.safetensors + model.json (backbone, spec), reference.json (the training-time drift
profile the pods compare live traffic with) and rules.yaml (the analyst rules). With --store it
also builds the TorchServe model directory `<store>/fraud` (our handler + those files), which is
what a SelfHealingModel's spec.model.archive points at and what the healing Job reads.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from examples.fraud.generator import CLASSES, FEATURES, LOG_FEATURES, RULES_FILE, sample
from model_handler.archive import build_archive
from model_handler.model import save_model
from model_handler.rules import RuleSet
from model_handler.sketches import ReferenceProfile
from model_handler.training import train_backbone

REFERENCE_FILE = "reference.json"
RULES_NAME = "rules.yaml"


def build(out: Path, rows: int = 40000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = sample(rng, rows)
    model = train_backbone(data.x, data.y, FEATURES, CLASSES, log_features=LOG_FEATURES, seed=seed)
    rules = RuleSet.from_yaml(RULES_FILE, FEATURES, CLASSES)
    reference = ReferenceProfile.fit(data.x, model.predict_proba(data.x).numpy(), rules.fires(data.x).numpy(),
                                     rules.labels.numpy(), FEATURES, CLASSES, labels=data.y)
    out.mkdir(parents=True, exist_ok=True)
    digest = save_model(model, out)
    (out / REFERENCE_FILE).write_text(json.dumps(reference.to_dict()))
    shutil.copyfile(RULES_FILE, out / RULES_NAME)
    test = sample(rng, 10000)
    accuracy = float((model.predict_proba(test.x).argmax(1).numpy() == test.y).mean())
    return {"out": str(out), "model_hash": digest, "rows": rows, "clean_accuracy": round(accuracy, 4)}


HANDLER = Path(__file__).resolve().parents[2] / "model_handler" / "handler.py"


def build_served(store: Path, rows: int = 40000, seed: int = 0, name: str = "fraud") -> Path:
    """Train, then package as a TorchServe model directory `<store>/<name>`; returns its path."""
    model_dir = store.parent / f"{store.name}-{name}-model"
    build(model_dir, rows, seed)
    return build_archive(model_dir, HANDLER, store, name, archive_format="dir")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the example fraud backbone.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", type=Path, help="also build the TorchServe model directory here")
    args = parser.parse_args(argv)
    result = build(args.out, args.rows, args.seed)
    if args.store:
        result["archive"] = str(build_archive(args.out, HANDLER, args.store, "fraud", archive_format="dir"))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
