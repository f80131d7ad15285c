"""Loading what a pod serves and a heal Job heals: the model directory, and adapters into its model.

    served = load_served(model_dir)                       # model, reference, rules, backbone hash
    load_adapter(served.model, registry, "v3")            # every check of model_handler.adapters

The serving core (`service.ModelService.from_model_dir`) and the heal Job (`heal.run`) both read
through these, so both refuse the same adapters for the same reasons; the operator runs the same
checks torch-free (`adapters.verify_adapter`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from model_handler.adapters import VerifiedAdapter, verify_adapter
from model_handler.model import SelfHealingNet, load_model
from model_handler.registry import BASE_VERSION, AdapterRegistry
from model_handler.rules import RuleSet
from model_handler.sketches import ReferenceProfile

REFERENCE_FILE = "reference.json"
RULES_FILE = "rules.yaml"


@dataclass
class Served:
    """A model directory: the frozen model (adapter at `base`), its reference profile and rules.
    `backbone_hash` is the sha256 of model.safetensors, what an adapter's meta must name."""

    model: SelfHealingNet
    reference: ReferenceProfile
    rules: RuleSet
    backbone_hash: str


def load_served(model_dir: str | os.PathLike, rules_file: str | os.PathLike | None = None,
                rules: Sequence[dict] | None = None) -> Served:
    """Load model.safetensors/model.json, reference.json and the rules: `rules` (the spec's rule
    dicts) when given, else the YAML `rules_file`, else the directory's rules.yaml. Raises OSError or
    ValueError (RuleError, a malformed model or profile) naming the file."""
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    features, classes = model.spec.features, model.spec.classes
    reference = ReferenceProfile.from_dict(json.loads((model_dir / REFERENCE_FILE).read_text()))
    if rules is not None:
        ruleset = RuleSet.from_dicts(rules, features, classes)
    else:
        ruleset = RuleSet.from_yaml(Path(rules_file) if rules_file else model_dir / RULES_FILE, features, classes)
    return Served(model, reference, ruleset, model.backbone_hash)


def load_adapter(model: SelfHealingNet, registry: AdapterRegistry | None, version: str,
                 backbone_hash: str | None = None) -> VerifiedAdapter | None:
    """Serve `version` in `model` (`base`: reset to identity, returns None). Every check runs before
    anything is loaded, so a refused adapter (AdapterError, RegistryError) leaves the current one.
    `backbone_hash` defaults to the model's own (set when it was loaded from a directory)."""
    if version == BASE_VERSION:
        model.reset_adapter()
        return None
    verified = verify_adapter(registry, version, model.adapter_shapes(),
                              model.backbone_hash if backbone_hash is None else backbone_hash)
    model.load_adapter_arrays(verified.tensors)
    return verified
