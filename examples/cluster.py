"""selfheal on a local cluster: the sandbox harness (`sandbox.cluster.LocalCluster`) with the
SelfHealingModel CRD applied, a namespace, and the real operator process (`python -m shm_operator`).

The one harness of `make demo` (`examples/demo`), `bench.chaos`, `bench.scale` and `tests/operator`:

    with SelfhealCluster(workdir, namespace="demo").start() as cluster:
        operator = cluster.start_operator()
        cluster.apply(cluster.example_model("fraud", archive=model_dir, storage=store))
        status = cluster.wait_status("fraud", serving("base"), 180, "2 pods serving base")
        cluster.patch_version("fraud", "base")
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import yaml

from sandbox.cluster import Child, ClusterError, LocalCluster, WaitTimeout
from sandbox.env import free_port

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "selfhealingmodels.yaml"
EXAMPLE_CR = REPO / "examples" / "fraud" / "selfhealingmodel.yaml"

__all__ = ["CRD", "EXAMPLE_CR", "Child", "ClusterError", "SelfhealCluster", "WaitTimeout", "condition",
           "fast_settings", "operator_command", "serving"]


def operator_command(namespace: str, *extra: str) -> list[str]:
    """The operator process for one namespace, as the chart runs it."""
    return [sys.executable, "-m", "shm_operator", "--namespace", namespace, *extra]


def condition(status: dict, type_: str) -> dict:
    """One condition of a status (`{}` if absent)."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def fast_settings(cooldown_seconds: int) -> dict:
    """Spec settings for a model on a local cluster under test traffic: 2 pods, every request
    sampled, and drift, healing and rollback windows of a few hundred rows, so that the loop reacts
    in seconds (a heal waits at most 30 s for its training rows). `cooldown_seconds` sets how soon a second heal may follow."""
    return {"replicas": 2,
            "serving": {"workers": 1, "sampleFraction": 1.0},
            "drift": {"windowRows": 300, "minSamples": 200, "checkIntervalSeconds": 2},
            "healing": {"cooldownSeconds": cooldown_seconds, "trainingWindowRows": 1500, "minRows": 300,
                        "waitForRowsSeconds": 30},
            "promotion": {"strategy": "RollingRestart", "rollback": {"watchSeconds": 20, "minSamples": 200}}}


def serving(version: str, replicas: int = 2) -> Callable[[dict], bool]:
    """A status predicate: every one of `replicas` pods serves `version`."""
    return lambda s: (s.get("adapter") or {}).get("current") == version and \
        (s.get("adapter") or {}).get("ready") == f"{replicas}/{replicas}"


class SelfhealCluster(LocalCluster):
    """A LocalCluster with the CRD Established and `namespace` created by `start`, plus the operator
    and SelfHealingModel helpers."""

    def start(self) -> "SelfhealCluster":
        super().start()
        self.apply_crd(CRD)
        if self.namespace:
            self.create_namespace(self.namespace)
        return self

    # -- the operator ----------------------------------------------------------------------------
    def start_operator(self, *extra_args: str, env: dict[str, str] | None = None, name: str = "operator",
                       namespace: str | None = None, log_path: Path | None = None, cwd: Path | None = None) -> Child:
        """`python -m shm_operator --namespace NS --verbose` with a free metrics port on loopback."""
        env = {"SELFHEAL_METRICS_PORT": str(free_port()), "SELFHEAL_METRICS_ADDR": "127.0.0.1",
               "PYTHONSAFEPATH": "1", **(env or {})}
        return self.spawn(name, operator_command(namespace or self.namespace, *extra_args), env,
                          log_path=log_path, cwd=cwd)

    # -- SelfHealingModels -----------------------------------------------------------------------
    def example_model(self, name: str, archive: Path, storage: Path, **spec: object) -> dict:
        """The example SelfHealingModel (`examples/fraud/selfhealingmodel.yaml`) named `name`, serving
        `archive` with its registry in `storage`; `spec` keys replace the example's."""
        body = yaml.safe_load(EXAMPLE_CR.read_text())
        body["metadata"]["name"] = name
        body["spec"]["model"]["archive"] = str(archive)
        body["spec"]["storage"] = {"uri": Path(storage).as_uri()}
        body["spec"].update(spec)
        return body

    def status(self, name: str) -> dict:
        """The SelfHealingModel's status; `{}` while it has none or the API does not answer (restarting)."""
        try:
            return self.get("shm", name).get("status") or {}
        except (ClusterError, ValueError, subprocess.TimeoutExpired):
            return {}

    def wait_status(self, name: str, predicate: Callable[[dict], object], timeout: float, what: str,
                    interval: float = 1.0, alive: Callable[[], None] | None = None) -> dict:
        """Poll the status until `predicate` holds; WaitTimeout names the phase, adapter, last heal and
        conditions it saw last."""
        seen: dict = {}

        def holds() -> dict | None:
            seen.clear()
            seen.update(self.status(name))
            return dict(seen) if seen and predicate(seen) else None
        try:
            return self.wait(holds, timeout, what, interval, alive)
        except WaitTimeout:
            raise WaitTimeout(
                f"no {what} within {timeout:.0f}s (phase {seen.get('phase')}, adapter {seen.get('adapter')}, "
                f"lastHeal {json.dumps(seen.get('lastHeal'))[:300]}, conditions "
                f"{[(c['type'], c['status'], c.get('reason')) for c in seen.get('conditions') or []]})") from None

    def patch_model(self, name: str, body: dict) -> str:
        return self.patch("shm", name, body)

    def patch_version(self, name: str, version: str) -> str:
        """What a person does to roll back or forward: set `spec.adapter.version`."""
        return self.patch_model(name, {"spec": {"adapter": {"version": version}}})

    def events(self, name: str) -> list[dict]:
        """The Events about object `name` in the namespace."""
        return [e for e in self.get("events").get("items", []) if e.get("involvedObject", {}).get("name") == name]

    def serving_pods(self, name: str) -> list[dict]:
        """The model's serving pods that are not terminating."""
        return [p for p in self.get("pods", "-l", f"selfheal.io/model={name},selfheal.io/component=serving")["items"]
                if not p["metadata"].get("deletionTimestamp")]
