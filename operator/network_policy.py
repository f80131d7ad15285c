"""The per-model NetworkPolicy: the operator's settings for it (from the chart, through
$SELFHEAL_NETWORK_POLICY) and the object rendered from them for a model's serving pods (a child of
the SelfHealingModel like those in `children.py`; docs/security.md)."""
from __future__ import annotations

import json
import os

from shm_operator.children import labels, serving_name
from shm_operator.names import COMPONENT_LABEL, MODEL_LABEL

# Operator settings for the per-model NetworkPolicy (the chart renders it from its values; unset: none).
NETWORK_POLICY_ENV = "SELFHEAL_NETWORK_POLICY"


def network_policy_settings(environ=None) -> dict | None:
    """The operator's NetworkPolicy settings from $SELFHEAL_NETWORK_POLICY (JSON, rendered by the
    chart): {"operator": [peers], "metrics": [peers], "inference": [peers]}. None when unset or
    empty: the operator then creates no NetworkPolicy (e.g. run outside the chart, or opted out)."""
    raw = (os.environ if environ is None else environ).get(NETWORK_POLICY_ENV, "").strip()
    if not raw:
        return None
    settings = json.loads(raw)
    if not isinstance(settings, dict) or not isinstance(settings.get("operator"), list) or not settings["operator"]:
        raise ValueError(f"{NETWORK_POLICY_ENV} must be a JSON object whose 'operator' is a non-empty list "
                         f"of NetworkPolicyPeers (who may reach the management port)")
    for key in ("metrics", "inference"):
        if not isinstance(settings.get(key, []), list):
            raise ValueError(f"{NETWORK_POLICY_ENV}: {key!r} must be a list of NetworkPolicyPeers")
    return settings


def network_policy(name: str, settings: dict) -> dict:
    """Ingress to one model's serving pods: management (8081: the describe API with the drift
    status, which can also load and unload models) only from the operator; metrics (8082) only from
    `metrics` peers (Prometheus), none if empty; inference (8080) from `inference` peers, any source
    if empty. Ports by name, as on the pods. Egress is not restricted (pods reach storage)."""
    def rule(port: str, peers: list[dict] | None) -> dict:
        return {"ports": [{"port": port, "protocol": "TCP"}], **({"from": peers} if peers is not None else {})}

    ingress = [rule("inference", settings.get("inference") or None),
               rule("management", settings["operator"])]
    if settings.get("metrics"):
        ingress.append(rule("metrics", settings["metrics"]))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": serving_name(name), "labels": labels(name, "serving")},
            "spec": {"podSelector": {"matchLabels": {MODEL_LABEL: name, COMPONENT_LABEL: "serving"}},
                     "policyTypes": ["Ingress"], "ingress": ingress}}
