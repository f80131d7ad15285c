"""Names every operator module shares, spelled once: the API group and resource, the labels and
annotations the operator writes, the base adapter and the adapter version pattern.

The version rules themselves (the pattern, `next_version`) belong to the registry, which names the
versions it stores; the operator takes them from there."""
from __future__ import annotations

from model_handler.registry import BASE_VERSION, VERSION_PATTERN

API_GROUP = "selfheal.io"
API_VERSION = "v1alpha1"
PLURAL = "selfhealingmodels"
RESOURCE = (API_GROUP, API_VERSION, PLURAL)   # what every Kopf handler of the operator takes

MODEL_LABEL = f"{API_GROUP}/model"
COMPONENT_LABEL = f"{API_GROUP}/component"
ADAPTER_ANNOTATION = f"{API_GROUP}/adapter-version"
RULES_ANNOTATION = f"{API_GROUP}/rules-hash"
# {"version", "by", "reason"} of the operator's own spec.adapter.version change (shm_operator.rollout)
CHANGE_ANNOTATION = f"{API_GROUP}/adapter-change"

# An adapter version as the CRD accepts it: `base`, or a name the registry can store.
ADAPTER_VERSION = rf"^({BASE_VERSION}|{VERSION_PATTERN.pattern.lstrip('^').rstrip('$')})$"
